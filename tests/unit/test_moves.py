"""Moves and the memory type each ran on (analysis/moves.py)."""

from memtrace.analysis.moves import find_moves, summarize
from tests.builders import FB_BYTES, TTM_BO, TTM_STACK, bochs_move, move, reserve


def test_nested_move_calls_are_one_move_linked_to_the_reservation_inside():
    events = bochs_move(10_689_092_000, cycles=2_227_400_000)
    (only,) = find_moves(events)
    assert only.outer.fn == "drm_gem_vram_bo_driver_move"
    assert [c.fn for c in only.calls] == [
        "drm_gem_vram_bo_driver_move",
        "ttm_bo_move_memcpy",
        "ttm_move_memcpy",
    ]
    assert only.mappings == [events[2]]
    assert only.effective_type == "UC-" and only.downgraded
    assert (only.bytes, only.duration_ns, only.cycles) == (FB_BYTES, 8_260_000, 2_227_400_000)


def test_after_the_fix_the_move_runs_write_combined():
    (only,) = find_moves(bochs_move(1_000_000, granted="WC"))
    assert only.effective_type == "WC" and not only.downgraded


def test_reservations_of_other_threads_or_outside_the_call_are_not_linked():
    events = bochs_move(1_000_000)
    events[2] = reserve(1_280_000, TTM_BO, "WC", "UC-", TTM_STACK, pid=17, comm="kworker/0:1")
    events.append(reserve(20_000_000, TTM_BO, "WC", "UC-", TTM_STACK))
    (only,) = find_moves(events)
    assert only.mappings == [] and only.effective_type is None and not only.downgraded


def test_a_move_that_maps_no_iomem_has_no_type():
    (only,) = find_moves([move(5, "drm_gem_vram_bo_driver_move", 57_000)])
    assert only.effective_type is None and only.bytes == FB_BYTES


def test_consecutive_moves_on_one_thread_are_separate():
    moves = find_moves(bochs_move(1_000_000) + bochs_move(20_000_000, granted="WC"))
    assert [m.effective_type for m in moves] == ["UC-", "WC"]


def test_without_a_return_a_move_takes_the_reservations_since_the_previous_move():
    events = [
        reserve(1_000, TTM_BO, "WC", "UC-", TTM_STACK),
        move(2_000, "ttm_move_memcpy"),
        reserve(3_000, TTM_BO, "WC", "WC", TTM_STACK),
        move(4_000, "ttm_move_memcpy"),
    ]
    first, second = find_moves(events)
    assert first.effective_type == "UC-" and second.effective_type == "WC"
    assert first.duration_ns is None


def test_refused_reservations_are_not_mappings():
    events = bochs_move(1_000_000)
    events[2] = reserve(1_280_000, TTM_BO, "WC", None, TTM_STACK, ret=-16)
    (only,) = find_moves(events)
    assert only.mappings == []


def test_a_granted_type_supplied_by_the_model_is_used():
    events = bochs_move(1_000_000, granted=None)
    (only,) = find_moves(events, {id(events[2]): "UC-"})
    assert only.effective_type == "UC-" and only.downgraded


def test_inner_calls_fill_in_what_the_outer_call_lacks():
    events = [
        move(1_000, "ttm_bo_move_memcpy", 9_000, nbytes=None),
        move(2_000, "ttm_move_memcpy", 5_000, cycles=77),
    ]
    (only,) = find_moves(events)
    assert (only.bytes, only.duration_ns, only.cycles) == (FB_BYTES, 9_000, 77)


def test_summary_counts_bytes_and_times():
    moves = find_moves(
        bochs_move(1_000_000)
        + bochs_move(20_000_000)
        + [move(40_000_000, "drm_gem_vram_bo_driver_move", 2_000_000)]
    )
    summary = summarize(moves)
    assert (summary.moves, summary.bytes) == (3, 3 * FB_BYTES)
    assert (summary.total_ns, summary.median_ns, summary.cycles) == (18_520_000, 8_260_000, None)
    empty = summarize([])
    assert (empty.moves, empty.bytes, empty.total_ns, empty.median_ns) == (0, None, None, None)

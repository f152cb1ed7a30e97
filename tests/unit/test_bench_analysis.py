"""analysis/bench.py on synthetic figures: the seed's 124x is honoured, TCG-like equal figures
are not, KVM and bare metal are told apart, the thresholds hold at their edges; and the pure
parts of finding a mapping's type (the fault path's lookup, PAT list diffs, TTM dumps)."""

import os

import pytest

from memtrace.analysis import bench
from memtrace.analysis.bench import (
    FRAME_BYTES,
    HONOURED_MIN_RATIO,
    NOT_HONOURED_MAX_RATIO,
    Host,
    HostEvidence,
    Measured,
    TtmNode,
    choose_basis,
    decide,
    figures,
    frame_costs,
    identify_host,
    lookup_types,
    new_entries,
    new_used_nodes,
    overlaps_used,
    parse_ttm_manager,
    scratch_pages,
    time_ratio,
)
from tests.conftest import FIXTURES

BENCH_FIXTURES = os.path.join(FIXTURES, "bench")
SEED_UC_NS = 1_240_000_000  # 1.24 s per 0x3e8000 bytes through bochs' UC- mapping
SEED_WC_NS = 10_000_000  # 0.01 s write-combined

TCG = Host("tcg", "QEMU's TCG", ("/proc/cpuinfo has the hypervisor flag",))
KVM = Host("kvm", "KVM", ("the kernel logged 'Hypervisor detected: KVM'",))
METAL = Host("bare-metal", "no hypervisor", ("/proc/cpuinfo has no hypervisor flag",))


def mapping(name, effective, reference=False, **ns_by_operation):
    """A measured mapping whose passes of a frame each took the given nanoseconds."""
    figs = {op: figures(op, FRAME_BYTES, [ns] * 5) for op, ns in ns_by_operation.items()}
    return Measured(name, effective, figs, reference)


def anon(write=1_000_000, read=2_000_000):
    return mapping("anonymous RAM", "WB", True, write=write, read=read)


# -- figures -------------------------------------------------------------------------------------


def test_figures_give_median_spread_and_time_per_frame():
    figs = figures("write", 4_000_000, [4_000_000, 2_000_000, 1_000_000, 2_000_000, 3_000_000])
    assert figs.median_ns == 2_000_000
    assert figs.median_mbps == pytest.approx(2000.0)
    assert (figs.min_mbps, figs.max_mbps) == (pytest.approx(1000.0), pytest.approx(4000.0))
    assert figs.cv == pytest.approx(0.475, abs=1e-3)  # sample stdev 1.14 ms, mean 2.4 ms
    assert figs.frame_ms(FRAME_BYTES) == pytest.approx(2.048)
    record = figs.to_json(FRAME_BYTES)
    assert record["runs"] == 5 and record["durations_ns"][0] == 4_000_000
    assert figures("read", 10, [7]).cv == 0.0
    even = figures("read", 10, [1, 2, 3, 4])
    assert even.median_ns == 2.5


@pytest.mark.parametrize(
    "operation, nbytes, durations",
    [
        ("scribble", 10, [1]),
        ("write", 0, [1]),
        ("write", -5, [1]),
        ("write", 1.5, [1]),
        ("write", True, [1]),
        ("write", 10, []),
        ("write", 10, [0]),
        ("write", 10, [-3]),
        ("write", 10, [2.5]),
    ],
)
def test_figures_refuse_what_is_not_a_timing(operation, nbytes, durations):
    with pytest.raises(ValueError):
        figures(operation, nbytes, durations)


def test_ratio_is_per_byte():
    small = figures("write", 1000, [1000])
    big = figures("write", 4000, [2000])
    assert time_ratio(small, big) == pytest.approx(2.0)


# -- the verdict ---------------------------------------------------------------------------------


def test_the_seeds_figures_are_honoured_124x():
    """1.24 s through UC- against 0.01 s write-combined per 0x3e8000 bytes, under KVM."""
    mapped = [
        anon(write=SEED_WC_NS),
        mapping("resource0", "UC-", write=SEED_UC_NS),
        mapping("resource0_wc", "WC", write=SEED_WC_NS),
    ]
    verdict = decide(mapped, KVM)
    assert verdict.honoured is True
    assert verdict.basis.ratio == pytest.approx(124.0)
    assert (verdict.basis.slow_type, verdict.basis.reference_type) == ("UC-", "WC")
    assert verdict.text == "honoured by KVM: UC- writes are 124.0x slower than WC"
    assert verdict.evidence[0].startswith(
        "resource0 (UC-) writes took 124.00x the time of resource0_wc (WC) writes"
    )
    record = verdict.to_json()
    assert record["thresholds"]["honoured_min_ratio"] == HONOURED_MIN_RATIO
    assert any("124x" in source for source in record["thresholds"]["sources"])
    assert any("3.5x" in source for source in record["thresholds"]["sources"])


def test_tcg_like_equal_figures_are_not_honoured():
    mapped = [
        anon(write=1_000_000),
        mapping("resource0", "UC", write=1_020_000),
        mapping("dumb buffer", "WB", write=990_000),
    ]
    verdict = decide(mapped, TCG)
    assert verdict.honoured is False
    assert verdict.text == "not honoured: TCG emulates no memory types"
    assert verdict.basis.ratio == pytest.approx(1.02)
    assert verdict.basis.reference == "anonymous RAM"  # no WC mapping: the WB reference


def test_under_tcg_a_large_ratio_is_explained_not_believed():
    mapped = [anon(), mapping("resource0", "UC", write=10_000_000)]
    verdict = decide(mapped, TCG)
    assert verdict.honoured is False
    assert any("emulation of device memory" in line for line in verdict.evidence)


def test_under_tcg_without_any_uncached_mapping_the_host_alone_decides():
    verdict = decide([anon(), mapping("dumb buffer", "WB", write=1_000_000)], TCG)
    assert verdict.honoured is False and verdict.basis is None
    assert verdict.evidence[0].startswith("No figure: ")
    assert "iomem=relaxed" in verdict.evidence[0]


def test_kvm_with_equal_figures_is_not_honoured_and_says_why():
    mapped = [anon(write=1_000_000), mapping("resource0", "UC-", write=1_100_000)]
    verdict = decide(mapped, KVM)
    assert verdict.honoured is False
    assert verdict.text == "not honoured by KVM: UC- writes run as fast as WB (1.10x)"
    assert any("KVM_X86_QUIRK_IGNORE_GUEST_PAT" in line for line in verdict.evidence)


@pytest.mark.parametrize(
    "ratio, honoured",
    [
        (HONOURED_MIN_RATIO, True),
        (HONOURED_MIN_RATIO - 0.01, None),
        (NOT_HONOURED_MAX_RATIO + 0.01, None),
        (NOT_HONOURED_MAX_RATIO, False),
    ],
)
def test_thresholds_at_their_edges(ratio, honoured):
    mapped = [anon(write=1_000_000), mapping("resource0", "UC", write=int(1_000_000 * ratio))]
    verdict = decide(mapped, KVM)
    assert verdict.honoured is honoured
    if honoured is None:
        assert verdict.text.startswith("inconclusive: UC writes take ")
        assert "--runs" in verdict.text


def test_without_a_figure_the_verdict_is_unknown_except_on_bare_metal():
    assert decide([anon()], KVM).honoured is None
    assert decide([anon()], KVM).text.startswith("unknown: ")
    metal = decide([anon()], METAL)
    assert metal.honoured is True and "no hypervisor" in metal.text


def test_reads_are_the_last_resort_and_say_they_are_weaker():
    mapped = [anon(read=2_000_000), mapping("resource0", "WC", read=40_000_000)]
    verdict = decide(mapped, KVM)
    assert verdict.basis.operation == "read"
    assert verdict.honoured is True
    assert "weaker evidence" in verdict.evidence[0]


def test_basis_prefers_uncached_writes_against_wc_then_wb():
    wc = mapping("resource0_wc", "WC", write=1_000_000, read=9_000_000)
    uc = mapping("resource0", "UC-", write=5_000_000, read=9_000_000)
    assert choose_basis([anon(), wc, uc]).reference == "resource0_wc"
    assert choose_basis([anon(), uc]).reference == "anonymous RAM"
    # the dumb buffer is WB too, but only anonymous RAM is the reference
    dumb = mapping("dumb buffer", "WB", write=100)
    assert choose_basis([anon(), dumb, uc]).reference == "anonymous RAM"
    # unknown types never count
    assert choose_basis([anon(), mapping("x", None, write=9_000_000)]) is None


# -- the host ------------------------------------------------------------------------------------


def test_a_named_hypervisor_is_that_hypervisor():
    host = identify_host(
        HostEvidence(
            hypervisor_flag=True,
            kernel_log=True,
            log_vendor="KVM",
            clocksources=("kvm-clock", "tsc"),
        )
    )
    assert host.kind == "kvm"
    assert "the kvm-clock clocksource is available" in host.evidence
    assert (
        identify_host(
            HostEvidence(hypervisor_flag=True, kernel_log=True, log_vendor="Microsoft Hyper-V")
        ).kind
        == "hyper-v"
    )
    assert identify_host(HostEvidence(hypervisor_flag=True, sys_hypervisor="xen")).kind == "xen"
    assert (
        identify_host(HostEvidence(hypervisor_flag=True, clocksources=("kvm-clock",))).kind == "kvm"
    )


def test_the_flag_with_no_name_is_tcg_when_the_silence_was_seen():
    """The lab guests: 'QEMU Virtual CPU', no 'Hypervisor detected' line, no kvm-clock."""
    lab = HostEvidence(
        hypervisor_flag=True,
        kernel_log=True,
        clocksources=("tsc", "hpet"),
        cpu_model="QEMU Virtual CPU version 2.5+",
        dmi_vendor="QEMU",
    )
    host = identify_host(lab)
    assert host.kind == "tcg" and host.name == "QEMU's TCG"
    assert "the kernel log has no 'Hypervisor detected' line" in host.evidence
    # Without the kernel log (not root) the clocksources still show the silence.
    assert identify_host(HostEvidence(hypervisor_flag=True, clocksources=("tsc",))).kind == "tcg"
    # With nothing read, nothing is concluded.
    assert identify_host(HostEvidence(hypervisor_flag=True)).kind == "unknown"


def test_no_hypervisor_flag_is_bare_metal():
    host = identify_host(HostEvidence(hypervisor_flag=False, kernel_log=True))
    assert host.kind == "bare-metal"
    assert host.to_json()["evidence"] == ["/proc/cpuinfo has no hypervisor flag"]


# -- costs per frame -----------------------------------------------------------------------------


def test_costs_use_the_slowest_mapping_of_the_type_and_the_wc_reference():
    bochs = [(0xFD000000, 0xFE000000, "UC-", "UC", "0000:00:02.0 BAR0 (bochs-drm)")]
    mapped = [
        anon(write=SEED_WC_NS),
        mapping("resource0", "UC", write=SEED_UC_NS),
        mapping("resource0_wc", "WC", write=SEED_WC_NS),
    ]
    (cost,) = frame_costs(bochs, mapped)
    assert cost.measured_by == "resource0" and cost.reference == "WC"
    assert cost.frame_ms == pytest.approx(1240.0)
    assert cost.times_slower == pytest.approx(124.0)
    text = cost.sentence(FRAME_BYTES, honoured=True)
    assert text.startswith(
        "fd000000-fe000000 UC- (effective UC) in 0000:00:02.0 BAR0 "
        "(bochs-drm): a frame of 4096000 bytes written through it takes "
        "1240.00 ms here"
    )
    assert cost.to_json(FRAME_BYTES)["times_slower"] == pytest.approx(124.0)


def test_costs_when_not_honoured_or_not_measured_say_what_the_seed_saw():
    bochs = [(0xFD000000, 0xFE000000, "UC-", "UC", None)]
    (equal,) = frame_costs(bochs, [anon(), mapping("resource0", "UC", write=1_000_000)])
    assert "on a host that does (the seed's) it would be about 124x" in equal.sentence(
        FRAME_BYTES, honoured=False
    )
    (unmeasured,) = frame_costs(bochs, [anon()])
    assert unmeasured.frame_ms is None and unmeasured.times_slower is None
    assert "not measured here" in unmeasured.sentence()
    assert "1.24 s uncached instead of 0.01 s" in unmeasured.sentence()


# -- the type of a mapping -----------------------------------------------------------------------


def test_the_fault_path_takes_the_first_entry_over_each_page_else_uc_minus():
    entries = [(0xFD000000, 0xFE000000, "UC-"), (0xFD000000, 0xFD3E8000, "WC")]
    assert lookup_types(entries, 0xFD400000, 0xFD402000) == [(0xFD400000, 0xFD402000, "UC-")]
    qxl = [(0xF4000000, 0xF8000000, "WC")]
    assert lookup_types(qxl, 0xF6000000, 0xF6001800) == [(0xF6000000, 0xF6001800, "WC")]
    assert lookup_types([], 0x1000, 0x3000) == [(0x1000, 0x3000, "UC-")]
    mixed = [(0x2000, 0x3000, "WC")]
    assert lookup_types(mixed, 0x1000, 0x4000) == [
        (0x1000, 0x2000, "UC-"),
        (0x2000, 0x3000, "WC"),
        (0x3000, 0x4000, "UC-"),
    ]
    assert bench.effective_summary(lookup_types(mixed, 0x1000, 0x4000)) == ("UC-", ("UC-", "WC"))
    assert lookup_types(entries, 5, 5) == []


def test_new_entries_count_duplicates():
    before = [(1, 2, "UC-"), (1, 2, "UC-")]
    after = [(1, 2, "UC-"), (1, 2, "UC-"), (1, 2, "UC-"), (3, 4, "WC")]
    assert new_entries(before, after) == [(1, 2, "UC-"), (3, 4, "WC")]
    assert new_entries(after, before) == []


def _fixture(name):
    with open(os.path.join(BENCH_FIXTURES, name), encoding="ascii") as stream:
        return stream.read()


def test_ttm_dumps_of_the_lab_parse():
    bochs = parse_ttm_manager(_fixture("6.12-bochs-vram-mm.txt"))
    assert bochs.size == 4096
    assert bochs.nodes == (TtmNode(0, 0x3E8, True), TtmNode(0x3E8, 0x1000, False))
    qxl = parse_ttm_manager(_fixture("6.1-qxl_mem_mm.txt"))
    assert qxl.size == 16382 and len(qxl.used) > 20


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0x0-0x10: 16: used\n",
        "  size: 16\n0x0-0x10: 15: used\n",
        "  size: 16\n0x0-0x20: 32: used\n",
        "  size: 16\n0x8-0x10: 8: used\n0x0-0x8: 8: free\n",
        "  size: 0\n",
        "  size: 16\n" + "x" * 300 + "\n",
    ],
)
def test_ttm_dumps_that_do_not_add_up_are_refused(text):
    assert parse_ttm_manager(text) is None


def test_a_new_buffer_is_a_new_used_node():
    before = parse_ttm_manager(_fixture("6.12-bochs-vram-mm.txt"))
    after = parse_ttm_manager(
        "  size: 4096\n0x0-0x3e8: 1000: used\n0x3e8-0x7d0: 1000: used\n0x7d0-0x1000: 2096: free\n"
    )
    assert new_used_nodes(before, after) == [TtmNode(0x3E8, 0x7D0, True)]


def test_the_scratch_region_is_the_middle_of_the_largest_hole_with_a_frame_either_side():
    bochs = parse_ttm_manager(_fixture("6.12-bochs-vram-mm.txt"))
    pages = FRAME_BYTES // 4096  # 1000
    first, end = scratch_pages(bochs, pages)
    assert (first, end) == (0x3E8 + (3096 - 1000) // 2, 0x3E8 + (3096 - 1000) // 2 + 1000)
    assert first - 0x3E8 >= pages and 0x1000 - end >= pages
    assert not overlaps_used(bochs, first, end)
    assert overlaps_used(bochs, 0x3E0, 0x3F0)
    assert scratch_pages(bochs, 1100) is None  # 3096 < 3 x 1100
    assert scratch_pages(bochs, 0) is None
    qxl = parse_ttm_manager(_fixture("6.1-qxl_mem_mm.txt"))
    first, end = scratch_pages(qxl, pages)
    assert not overlaps_used(qxl, first, end)

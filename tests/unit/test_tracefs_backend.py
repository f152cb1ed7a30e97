"""The tracefs backend's pure parts, fed with trace text captured in lab guests
(tests/fixtures/tracefs/README.md says how)."""

import os
import random
import re

import pytest

from memtrace.errors import FeatureMissing
from memtrace.probes import kallsyms as kallsyms_module
from memtrace.probes import plan as plans
from memtrace.probes import tracefs_backend as tb
from memtrace.probes.kallsyms import parse_kallsyms
from memtrace.probes.targets import SymbolSource

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tracefs")
KERNELS = ("6.1", "6.12")
# What BTF answers for ttm_resource in Debian's builds: pages up to 6.1, bytes since 6.2.
BTF_UNITS = {"6.1": "num_pages", "6.12": "size"}


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as stream:
        return stream.read()


def guest_group(kernel):
    """The kprobe group the capture run used (memtrace_<its pid>)."""
    return re.search(r":(memtrace_\d+)/", fixture(f"kprobe_events-{kernel}.txt"))[1]


def guest_plan(kernel):
    """The default plan against the guest's kallsyms (after `modprobe bochs`)."""
    source = SymbolSource(parse_kallsyms(fixture(f"kallsyms-{kernel}-bochs.txt")))
    offsets = {
        "size|num_pages": (8, BTF_UNITS[kernel]),
        "bus.offset": (32, "offset"),
        "bus.caching": (44, "caching"),
    }
    return plans.build_plan(
        plans.DEFAULT_TARGETS, source, lambda module, struct, path: offsets[path], strict=False
    )


def registered_like_the_guest(kernel):
    """Compiled probes marked the way the guest's kernel took them: 6.1 refused $argN in
    return probes, so memtype_reserve's return is the plain one there."""
    compiled = tb.compile_plan(guest_plan(kernel), guest_group(kernel))
    for c in compiled:
        c.entry_registered = True
        c.return_registered = c.ret_plain if (kernel == "6.1" and c.ret_plain) else c.ret
        c.stack_registered = c.planned.spec.stack
    return compiled


def module_lookup(kernel, tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text(fixture(f"kallsyms-{kernel}-bochs.txt"))
    return kallsyms_module.ModuleIndex(str(path), str(tmp_path / "no-modules")).module_of


def parse_capture(kernel, tmp_path, chunks=None, tsc_mhz=None):
    out = []
    parser = tb.TraceParser(
        registered_like_the_guest(kernel),
        out.append,
        module_lookup(kernel, tmp_path),
        tsc_mhz=tsc_mhz,
    )
    data = fixture(f"trace-{kernel}-bochs.txt").encode()
    if chunks is None:
        parser.feed_bytes(data)
    else:
        cut = sorted(random.Random(chunks).sample(range(1, len(data)), 40))
        for start, end in zip([0] + cut, cut + [len(data)]):
            parser.feed_bytes(data[start:end])
    parser.flush()
    return parser, out


def find(found, fn, **fields):
    return [e for e in found if e.fn == fn and all(getattr(e, k) == v for k, v in fields.items())]


# -- kprobe_events lines -----------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_generated_lines_are_the_ones_the_guest_kernel_accepted(kernel):
    listed = {
        re.sub(r"^r\d+:", "r:", line)
        for line in fixture(f"kprobe_events-{kernel}.txt").splitlines()
    }
    compiled = registered_like_the_guest(kernel)
    assert len(compiled) == 18
    written = {line for c in compiled for line in (c.entry, c.return_registered)}
    assert written == listed


def test_lines_fetch_arguments_and_struct_fields_through_registers():
    compiled = {c.planned.fn: c for c in tb.compile_plan(guest_plan("6.12"), "memtrace_7")}
    assert compiled["memtype_reserve"].entry == (
        "p:memtrace_7/memtype_reserve memtype_reserve start=%di:x64 end=%si:x64 "
        "requested=%dx:u32 comm=$comm"
    )
    assert compiled["memtype_reserve"].ret == (
        "r:memtrace_7/memtype_reserve__ret memtype_reserve ret=$retval:s32 granted=+0($arg4):u32"
    )
    assert compiled["memtype_reserve"].ret_plain == (
        "r:memtrace_7/memtype_reserve__ret memtype_reserve ret=$retval:s32"
    )
    move = compiled["drm_gem_vram_bo_driver_move"]
    assert move.entry == (
        "p:memtrace_7/drm_vram_helper_bo_driver_move "
        "drm_vram_helper:bo_driver_move resource_size=+8(%cx):u64 comm=$comm"
    )
    # void functions still get a return probe: their duration is the point
    assert compiled["ttm_move_memcpy"].ret == (
        "r:memtrace_7/ttm_ttm_move_memcpy__ret ttm:ttm_move_memcpy"
    )
    assert compiled["ttm_move_memcpy"].ret_plain is None


def test_event_names_are_sanitized_and_unique():
    assert tb.event_name("ttm:ttm_move_memcpy") == "ttm_ttm_move_memcpy"
    assert tb.event_name("__ioremap_caller.isra.0") == "__ioremap_caller_isra_0"
    assert tb.event_name("9p:x") == "_9p_x"
    assert len(tb.event_name("f" * 200) + tb.RETURN_SUFFIX) <= tb.MAX_EVENT_NAME


# -- line parsing ------------------------------------------------------------------------------

ODD = fixture("trace-6.12-bochs.txt").splitlines()[0]
KWORKER = next(
    line
    for line in fixture("trace-6.1-bochs.txt").splitlines()
    if line.lstrip().startswith("kworker/")
)


def test_a_comm_with_spaces_dashes_and_brackets_parses():
    record = tb.parse_record(ODD)
    assert record == tb.Record(
        "odd-1 [000] a b",
        230,
        1,
        22_682_966_000,
        "track_pfn_remap",
        '(track_pfn_remap+0x4/0x120) pfn=0xfebf0 size=0x1000 comm="odd-1 [000] a b"',
    )


def test_kworker_comm_and_microsecond_timestamp():
    record = tb.parse_record(KWORKER)
    assert (record.comm, record.tid, record.cpu) == ("kworker/1:2", 54, 1)
    assert record.ts_ns % 1000 == 0


@pytest.mark.parametrize("comm", ["a-b-c", "x-1 [000] y", "<...>", "Web Content", "-"])
def test_other_comms_parse_too(comm):
    line = ODD.replace(" odd-1 [000] a b", comm.rjust(16))
    record = tb.parse_record(line)
    assert (record.comm, record.tid, record.event) == (comm, 230, "track_pfn_remap")


def test_optional_tgid_column_and_missing_flags():
    with_tgid = ODD.replace("-230     [001]", "-230     (    229) [001]")
    assert tb.parse_record(with_tgid).tid == 230
    no_flags = ODD.replace("[001] .....", "[001]")
    assert tb.parse_record(no_flags).ts_ns == 22_682_966_000


def test_stack_lines_and_notes_are_no_records():
    assert tb.parse_record(" => kprobe_trace_func") is None
    assert tb.parse_record("CPU:1 [LOST 12 EVENTS]") is None
    stack = next(
        line for line in fixture("trace-6.1-bochs.txt").splitlines() if "<stack trace>" in line
    )
    assert tb.parse_record(stack).event == tb.STACK_EVENT


def test_body_of_a_module_return_and_of_a_fault():
    location, values = tb.parse_body(
        "(ttm_bo_handle_move_mem+0xb8/0x170 [ttm] <- bo_driver_move) ret=0"
    )
    assert location == "ttm_bo_handle_move_mem+0xb8/0x170 [ttm] <- bo_driver_move"
    assert values == {"ret": 0}
    _, values = tb.parse_body(
        "(memtype_reserve+0x4/0x3b0) start=0xfd000000 end=(fault) requested=1 ret=-16"
    )
    assert values == {"start": 0xFD000000, "requested": 1, "ret": -16}
    assert tb.split_symbol("bochs_pci_probe+0x21a/0x360 [bochs]") == ("bochs_pci_probe", "bochs")


# -- stacks ------------------------------------------------------------------------------------


def first_stack(kernel, after):
    lines = fixture(f"trace-{kernel}-bochs.txt").splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) + 2
    frames = []
    for line in lines[start:]:
        if not line.startswith(" => "):
            break
        frames.append(line[4:])
    return frames


@pytest.mark.parametrize("kernel", KERNELS)
def test_stack_starts_at_the_probed_function(kernel):
    frames = first_stack(kernel, "memtype_reserve: ")
    assert frames[:4] == [
        "kprobe_trace_func",
        "kprobe_dispatcher",
        "aggr_pre_handler",
        "kprobe_ftrace_handler",
    ]
    cleaned = tb.clean_stack(frames, "memtype_reserve")
    assert cleaned[0] == "memtype_reserve" and cleaned[1] == "reserve_pfn_range"
    assert len(cleaned) >= 8


def test_stack_without_the_probed_function_loses_only_tracing_frames():
    frames = first_stack("6.1", "memtype_reserve: ")
    cleaned = tb.clean_stack(frames, "not_in_the_stack")
    assert cleaned[0] == "memtype_reserve"


def test_module_names_come_from_kallsyms_and_it_is_reread_when_modules_change(tmp_path):
    kallsyms, modules = tmp_path / "kallsyms", tmp_path / "modules"
    kallsyms.write_text("ffffffff81000000 T memtype_reserve\n")
    modules.write_text("")
    lookup = kallsyms_module.ModuleIndex(str(kallsyms), str(modules))
    assert lookup.module_of("memtype_reserve") is None
    kallsyms.write_text(fixture("kallsyms-6.1-bochs.txt"))
    assert lookup.module_of("bochs_pci_probe") is None  # /proc/modules unchanged: no re-read
    modules.write_text("bochs 16384 0 - Live 0x0\n")
    assert lookup.module_of("bochs_pci_probe") == "bochs"
    assert lookup.module_of("bochs_pci_probe.cold") == "bochs"
    assert lookup.module_of("__ioremap_caller") is None


# -- whole captures ----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_capture_gives_the_bochs_story(kernel, tmp_path):
    parser, found = parse_capture(kernel, tmp_path)
    text = fixture(f"trace-{kernel}-bochs.txt")
    entries = sum(
        1
        for line in text.splitlines()
        if (r := tb.parse_record(line))
        and r.event not in (tb.STACK_EVENT,)
        and not r.event.endswith(tb.RETURN_SUFFIX)
    )
    assert len(found) == entries
    assert parser.unmatched_returns == parser.unparsed_lines == parser.lost_reported == 0
    assert all(e.duration_ns is not None and e.duration_ns % 1000 == 0 for e in found)

    (bar,) = find(found, "memtype_reserve", start=0xFD000000, end=0xFE000000)
    assert (bar.requested, bar.comm) == ("UC-", "modprobe")
    assert "bochs_pci_probe [bochs]" in bar.stack
    assert bar.stack[:2] == ["memtype_reserve", "__ioremap_caller"]

    wc = find(found, "memtype_reserve", start=0xFD000000, end=0xFD3E8000, comm="modprobe")
    assert len(wc) == 1 and wc[0].requested == "WC"
    assert "ttm_kmap_iter_linear_io_init [ttm]" in wc[0].stack
    if kernel == "6.12":
        assert (wc[0].granted, wc[0].granted_from) == ("UC-", "return")
    else:
        assert wc[0].granted is None
    (sync,) = find(
        found, "memtype_kernel_map_sync", start=0xFD000000, size=0x3E8000, comm="modprobe"
    )
    assert sync.granted == "UC-"

    (memcpy,) = find(found, "ttm_move_memcpy")
    assert memcpy.bytes == 0x3E8000 and memcpy.duration_ns > 1_000_000
    assert memcpy.caller == "ttm_bo_move_memcpy [ttm]"
    move = find(found, "drm_gem_vram_bo_driver_move", bytes=0x3E8000)
    assert move and all(m.probe == "drm_vram_helper:bo_driver_move" for m in move)

    odd = find(found, "memtype_reserve", comm="odd-1 [000] a b")
    assert odd[0].start == 0xFEBF0000 and odd[0].stack[1] == "reserve_pfn_range"
    (bo_memcpy,) = find(found, "ttm_bo_move_memcpy")
    assert bo_memcpy.caller is None  # "[unknown/kretprobe'd]"


def test_chunked_reads_give_the_same_events(tmp_path):
    _, whole = parse_capture("6.12", tmp_path)
    _, chunked = parse_capture("6.12", tmp_path, chunks=7)
    assert [e.to_record() for e in chunked] == [e.to_record() for e in whole]


def test_cycles_come_from_duration_and_tsc(tmp_path):
    _, found = parse_capture("6.1", tmp_path, tsc_mhz=2000.0)
    (memcpy,) = find(found, "ttm_move_memcpy")
    assert memcpy.cycles == memcpy.duration_ns * 2 and memcpy.cycles_source == "tsc"


# -- pairing -----------------------------------------------------------------------------------

MEMCPY = [
    line for line in fixture("trace-6.1-bochs.txt").splitlines() if "ttm_ttm_move_memcpy" in line
]


def at(line, ts, tid=None):
    line = re.sub(r"\d+\.\d{6}:", f"{ts}:", line, count=1)
    return re.sub(r"modprobe-\d+ ", f"modprobe-{tid} ", line) if tid else line


def pair(lines):
    found = []
    parser = tb.TraceParser(registered_like_the_guest("6.1"), found.append)
    for line in lines:
        parser.feed_line(line)
    return parser, found


def test_recursion_pairs_innermost_first():
    entry, ret = MEMCPY
    _, found = pair(
        [at(entry, "1.000001"), at(entry, "1.000010"), at(ret, "1.000020"), at(ret, "1.000100")]
    )
    assert [e.duration_ns for e in found] == [10_000, 99_000]


def test_threads_pair_separately():
    entry, ret = MEMCPY
    _, found = pair(
        [
            at(entry, "1.000001", 5),
            at(entry, "1.000002", 6),
            at(ret, "1.000003", 5),
            at(ret, "1.000009", 6),
        ]
    )
    assert [(e.tid, e.duration_ns) for e in found] == [(5, 2000), (6, 7000)]


def test_a_missed_inner_return_leaves_the_entry_without_duration():
    lines = fixture("trace-6.1-bochs.txt").splitlines()
    bo_entry = next(line for line in lines if "ttm_ttm_bo_move_memcpy:" in line)
    bo_ret = next(line for line in lines if "ttm_ttm_bo_move_memcpy__ret:" in line)
    entry, _ret = MEMCPY
    parser, found = pair([bo_entry, entry, bo_ret, MEMCPY[1]])
    assert [(e.fn, e.duration_ns is None) for e in found] == [
        ("ttm_move_memcpy", True),
        ("ttm_bo_move_memcpy", False),
    ]
    assert parser.unmatched_returns == 1


def test_pending_entries_come_out_at_flush_and_lost_notes_count():
    parser, found = pair([MEMCPY[0], "CPU:1 [LOST 3 EVENTS]"])
    assert found == []
    parser.flush()
    assert len(found) == 1 and found[0].duration_ns is None
    assert parser.lost_reported == 3


# -- kernel files ------------------------------------------------------------------------------


def test_kprobe_profile_and_cpu_stats():
    profile = tb.parse_kprobe_profile(fixture("kprobe_profile-6.1.txt"))
    assert profile["memtype_reserve"] == (5, 0)
    assert profile["ttm_ttm_move_memcpy__ret"] == (1, 0)
    assert tb.parse_kprobe_profile("  ev  3  1\n  ev  2  4\n")["ev"] == (5, 5)
    cpu0 = fixture("per_cpu_stats-6.12.txt").split("== cpu1")[0]
    stats = tb.parse_cpu_stats(cpu0)
    assert stats["overrun"] == stats["dropped events"] == 0 and stats["read events"] == 6
    assert "oldest event ts" not in stats


def test_error_log_names_the_refused_part():
    log = fixture("error_log-6.1.txt")
    line = re.search(r"Command: (.*)", log)[1]
    assert tb.error_reason(log, line) == "Invalid $-variable specified (at '$arg4):u32')"
    assert tb.error_reason(log, "p:other/x foo") is None


# -- the backend without a kernel --------------------------------------------------------------


def backend(refuse):
    found = []
    be = tb.TracefsBackend(guest_plan("6.1"), found.append, {"tracefs_dir": "/nonexistent"})
    be._add = lambda line: "refused" if refuse(line) else None
    return be, found


def test_without_argn_at_return_the_plain_return_probe_is_used_once_detected():
    be, _ = backend(lambda line: "$arg" in line)
    for c in be.compiled:
        be._register(c)
    (reserve,) = [c for c in be.compiled if c.planned.fn == "memtype_reserve"]
    assert reserve.return_registered == reserve.ret_plain
    assert be.granted_at_return is False and be.stats.attach_failures == []
    assert len(be.stats.attached) == 18


def test_argn_at_return_sets_granted_at_return():
    be, _ = backend(lambda line: False)
    for c in be.compiled:
        be._register(c)
    assert be.granted_at_return is True


def test_a_refused_probe_is_listed_and_the_rest_attach():
    be, _ = backend(lambda line: "ioremap_uc " in line)
    for c in be.compiled:
        be._register(c)
    assert be.stats.attach_failures == [("ioremap_uc", "refused")]
    assert "ioremap_uc" not in be.stats.attached and "ioremap_wc" in be.stats.attached


def test_attach_needs_kprobe_events_and_detach_before_attach_is_harmless(tmp_path):
    be = tb.TracefsBackend(guest_plan("6.1"), print, {"tracefs_dir": str(tmp_path)})
    with pytest.raises(FeatureMissing, match="has no kprobe_events"):
        be.attach()
    be.detach()
    be.detach()
    assert be.cleanup_problems == [] and os.listdir(tmp_path) == []


def test_poll_reads_a_nonblocking_pipe_and_honours_the_timeout(tmp_path):
    be, found = backend(lambda line: False)
    be.compiled = registered_like_the_guest("6.1")
    be._parser = tb.TraceParser(be.compiled, found.append, module_lookup("6.1", tmp_path))
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    be._fd = read_end
    try:
        assert be.poll(0.05) == 0
        os.write(write_end, "\n".join(MEMCPY).encode() + b"\n")
        assert be.poll(1.0) == 1 and found[0].bytes == 0x3E8000
    finally:
        os.close(read_end)
        os.close(write_end)


# -- stale groups and instances ----------------------------------------------------------------


def test_remove_stale_touches_only_dead_memtrace_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(tb.psutil, "pid_exists", lambda pid: pid != 4242)
    for name in ("memtrace-4242", "memtrace-1", "othertool", "memtrace-x"):
        (tmp_path / "instances" / name).mkdir(parents=True)
    (tmp_path / "kprobe_events").write_text(
        "p:memtrace_4242/memtype_reserve memtype_reserve start=%di:x64\n"
        "r10:memtrace_4242/memtype_reserve__ret memtype_reserve ret=$retval:s32\n"
        "p:memtrace_1/memtype_free memtype_free\n"
        "p:othertool/mr memtype_reserve\n"
    )
    removed = tb.remove_stale(str(tmp_path))
    assert removed == [
        "instances/memtrace-4242",
        "memtrace_4242/memtype_reserve",
        "memtrace_4242/memtype_reserve__ret",
    ]
    assert sorted(os.listdir(tmp_path / "instances")) == ["memtrace-1", "memtrace-x", "othertool"]
    # a real kprobe_events deletes on "-:GRP/EV"; this plain file just records the writes
    written = (tmp_path / "kprobe_events").read_text().splitlines()[4:]
    assert written == ["-:memtrace_4242/memtype_reserve", "-:memtrace_4242/memtype_reserve__ret"]


def test_comm_fetched_at_the_hit_beats_ftraces_comm_cache():
    # A process that lives a few milliseconds shows as "<...>" in the line header (ftrace
    # saves task names lazily); the $comm fetch carries the real one.
    entry, ret = MEMCPY
    entry = re.sub(r"^\s*modprobe-(\d+)", r"           <...>-\1", entry)
    assert "comm=" in entry
    _, found = pair([entry, ret])
    assert [e.comm for e in found] == ["modprobe"]


# -- MTRR probes (lines from a 6.12 lab guest booted with nopat, writing /proc/mtrr) ------------

MTRR_TRACE = """\
              sh-255     [000] .....   436.024453: mtrr_add_page: (mtrr_add_page+0x4/0x4c0) pfn=0xfd000 pages=0x1000 mtrr_type=1 comm="sh"
              sh-255     [000] .....   436.024974: <stack trace>
 => kprobe_trace_func
 => kprobe_dispatcher
 => aggr_pre_handler
 => kprobe_ftrace_handler
 => 0xffffffffc04fb0de
 => mtrr_add_page
 => mtrr_write
 => proc_reg_write
 => vfs_write
 => ksys_write
 => do_syscall_64
 => entry_SYSCALL_64_after_hwframe
              sh-255     [000] .....   436.030565: mtrr_add_page__ret: (mtrr_write+0x1da/0x220 <- mtrr_add_page) ret=1
              sh-255     [000] .....   437.678892: mtrr_del_page: (mtrr_del_page+0x4/0x1f0) reg=1 pfn=0x0 pages=0x0 comm="sh"
              sh-255     [000] .....   437.679017: <stack trace>
 => kprobe_trace_func
 => mtrr_del_page
 => mtrr_write
              sh-255     [000] .N...   437.680927: mtrr_del_page__ret: (mtrr_write+0xcb/0x220 <- mtrr_del_page) ret=1
              sh-255     [000] .....   438.000001: mtrr_del_page: (mtrr_del_page+0x4/0x1f0) reg=-1 pfn=0xfd000 pages=0x1000 comm="sh"
              sh-255     [000] .....   438.000002: <stack trace>
 => mtrr_del_page
              sh-255     [000] .....   438.000003: mtrr_del_page__ret: (mtrr_ioctl+0x1/0x2 <- mtrr_del_page) ret=-22
"""


def mtrr_plan():
    names = ("mtrr_add_page", "mtrr_del_page", "arch_phys_wc_add", "arch_phys_wc_del")
    table = parse_kallsyms("".join(f"ffffffff8106{i}000 T {n}\n" for i, n in enumerate(names)))
    return plans.build_plan(names, SymbolSource(table), lambda *_: None, strict=True)


def test_mtrr_probe_lines():
    compiled = {c.planned.fn: c for c in tb.compile_plan(mtrr_plan(), "memtrace_7")}
    assert compiled["mtrr_add_page"].entry == (
        "p:memtrace_7/mtrr_add_page mtrr_add_page pfn=%di:x64 pages=%si:x64 "
        "mtrr_type=%dx:u32 comm=$comm"
    )
    assert compiled["mtrr_add_page"].ret == (
        "r:memtrace_7/mtrr_add_page__ret mtrr_add_page ret=$retval:s32"
    )
    assert compiled["mtrr_del_page"].entry == (
        "p:memtrace_7/mtrr_del_page mtrr_del_page reg=%di:s32 pfn=%si:x64 pages=%dx:x64 comm=$comm"
    )
    assert compiled["arch_phys_wc_add"].entry == (
        "p:memtrace_7/arch_phys_wc_add arch_phys_wc_add start=%di:x64 size=%si:x64 comm=$comm"
    )
    assert compiled["arch_phys_wc_del"].entry == (
        "p:memtrace_7/arch_phys_wc_del arch_phys_wc_del handle=%di:s32 comm=$comm"
    )
    assert compiled["arch_phys_wc_del"].ret == (
        "r:memtrace_7/arch_phys_wc_del__ret arch_phys_wc_del"
    )


def test_mtrr_lines_become_mtrr_events():
    compiled = tb.compile_plan(mtrr_plan(), "memtrace_7")
    for c in compiled:
        c.entry_registered, c.return_registered, c.stack_registered = True, c.ret, True
    found = []
    parser = tb.TraceParser(compiled, found.append)
    parser.feed(MTRR_TRACE)
    parser.flush()
    add, delete, refused = found
    assert (add.role, add.start, add.end, add.size) == (
        "mtrr_add",
        0xFD000000,
        0xFE000000,
        0x1000000,
    )
    assert (add.mtrr_type, add.mtrr_reg, add.ret, add.comm) == ("WC", 1, 1, "sh")
    assert add.stack[:2] == ["mtrr_add_page", "mtrr_write"] and add.caller == "mtrr_write"
    assert add.duration_ns == 6_112_000
    # Deleting by register: the kernel ignores base and size, so no range.
    assert (delete.role, delete.mtrr_reg, delete.ret) == ("mtrr_del", 1, 1)
    assert (delete.start, delete.end, delete.size, delete.mtrr_type) == (None,) * 4
    # Deleting by range (reg -1) that failed: the range, no register.
    assert (refused.start, refused.end, refused.mtrr_reg, refused.ret) == (
        0xFD000000,
        0xFE000000,
        None,
        -22,
    )


# vesafb (6.1 lab guest, nopat, vga=0x317 video=vesafb:mtrr:3) unbound and bound again.
PHYS_WC_TRACE = """\
              sh-232     [000] .N...   591.667220: arch_phys_wc_del: (arch_phys_wc_del+0x0/0x40) handle=1001 comm="sh"
              sh-232     [000] .N...   591.667450: <stack trace>
 => kprobe_ftrace_handler
 => arch_phys_wc_del
 => vesafb_destroy
 => unregister_framebuffer
              sh-232     [000] .N...   591.667494: mtrr_del_page: (mtrr_del_page+0x0/0x1c0) reg=1 pfn=0x0 pages=0x0 comm="sh"
              sh-232     [000] .N...   591.667518: <stack trace>
 => mtrr_del_page
 => vesafb_destroy
              sh-232     [000] .....   591.674914: mtrr_del_page__ret: ([unknown/kretprobe'd] <- mtrr_del_page) ret=1
              sh-232     [000] .....   591.674996: arch_phys_wc_del__ret: (vesafb_destroy+0x28/0x60 <- arch_phys_wc_del)
              sh-232     [000] .....   592.742958: arch_phys_wc_add: (arch_phys_wc_add+0x0/0x60) start=0xfd000000 size=0x1000000 comm="sh"
              sh-232     [000] .....   592.743108: <stack trace>
 => arch_phys_wc_add
 => vesafb_probe.cold
              sh-232     [000] .....   592.743142: mtrr_add_page: (mtrr_add_page+0x0/0x440) pfn=0xfd000 pages=0x1000 mtrr_type=1 comm="sh"
              sh-232     [000] .....   592.743162: <stack trace>
 => mtrr_add_page
 => arch_phys_wc_add
              sh-232     [000] .....   592.750429: mtrr_add_page__ret: (arch_phys_wc_add+0x43/0x60 <- mtrr_add_page) ret=1
              sh-232     [000] .....   592.750459: arch_phys_wc_add__ret: (vesafb_probe.cold+0x2a7/0x590 <- arch_phys_wc_add) ret=1001
"""


def test_a_drivers_wc_mtrr_through_arch_phys_wc():
    compiled = tb.compile_plan(mtrr_plan(), "memtrace_7")
    for c in compiled:
        c.entry_registered, c.return_registered, c.stack_registered = True, c.ret, True
    found = []
    parser = tb.TraceParser(compiled, found.append)
    parser.feed(PHYS_WC_TRACE)
    parser.flush()
    by_fn = {e.fn: e for e in found}
    assert [e.fn for e in found] == [
        "mtrr_del_page",
        "arch_phys_wc_del",
        "mtrr_add_page",
        "arch_phys_wc_add",
    ]
    wc_del = by_fn["arch_phys_wc_del"]
    assert (wc_del.role, wc_del.mtrr_type, wc_del.mtrr_reg, wc_del.ret) == (
        "phys_wc",
        "WC",
        1,
        None,
    )
    assert wc_del.caller == "vesafb_destroy" and wc_del.start is None
    assert by_fn["mtrr_del_page"].caller is None  # its return address was a kretprobe's
    wc_add = by_fn["arch_phys_wc_add"]
    assert (wc_add.start, wc_add.end, wc_add.ret, wc_add.mtrr_reg, wc_add.mtrr_type) == (
        0xFD000000,
        0xFE000000,
        1001,
        1,
        "WC",
    )
    inner = by_fn["mtrr_add_page"]
    assert (inner.mtrr_reg, inner.caller, inner.stack) == (
        1,
        "arch_phys_wc_add",
        ["mtrr_add_page", "arch_phys_wc_add"],
    )

"""The bcc backend's pure parts: the generated BPF C, record decoding, stack frames.

Nothing here compiles or loads BPF; the guest run (tests/lab, /tmp/bcc-exp) does that.
"""

import os
import re

import pytest

from memtrace.probes import bcc_backend, decode, kallsyms
from memtrace.probes import plan as plans
from memtrace.probes.bcc_backend import (
    F_GRANTED,
    F_PMU,
    F_RET,
    KernelSymbolizer,
    clean_frames,
    fill,
    parse_record,
    pick_module,
    program_cflags,
    program_text,
    raw_call,
    record_struct,
)
from memtrace.probes.kallsyms import parse_kallsyms
from memtrace.probes.targets import TARGETS, SymbolSource

MODULE_AREA = bcc_backend.MODULES_VADDR + 0x10000


def _kallsyms_with_every_target():
    """A kernel where every target's first candidate exists and the modules are loaded."""
    lines = []
    for target in TARGETS:
        module = f"\t[{target.module}]" if target.module else ""
        for inlined in target.inlined_into:
            lines.append(f"ffffffffc0001000 t {inlined.caller}{module}")
        if not target.inlined_into:
            lines.append(f"ffffffff81000000 T {target.candidates[0].symbol}{module}")
    return parse_kallsyms("\n".join(lines))


@pytest.fixture(scope="module")
def default_plan():
    source = SymbolSource(_kallsyms_with_every_target())
    return plans.build_plan(plans.DEFAULT_TARGETS, source, lambda *_: None, strict=False)


def _probe(plan, name):
    return next(p for p in plan.probes if p.probe_name == name)


def test_fill_refuses_unfilled_and_unused_placeholders():
    assert fill("a {{x}} b {{y}}", x=1, y="z") == "a 1 b z"
    with pytest.raises(ValueError, match="unfilled"):
        fill("a {{x}} b {{y}}", x=1)
    with pytest.raises(ValueError, match="without placeholder"):
        fill("a {{x}}", x=1, y=2)


def test_default_plan_program_has_every_probe_and_no_placeholder(default_plan):
    assert len(default_plan.probes) == len(TARGETS)
    text = program_text(default_plan)
    assert "{{" not in text and "}}" not in text
    for probe_id in range(len(default_plan.probes)):
        assert f"int mt_entry_{probe_id}(struct pt_regs *ctx)" in text
        assert f"int mt_return_{probe_id}(struct pt_regs *ctx)" in text
    # The fixed part: the maps and helpers the task asks for.
    for needle in (
        "BPF_STACK_TRACE(mt_stacks",
        "BPF_PERF_ARRAY(mt_cycles",
        "bpf_ktime_get_ns()",
        "BPF_RINGBUF_OUTPUT(mt_events",
        "BPF_PERF_OUTPUT(mt_events",
        "bpf_send_signal(MT_SIGSTOP)",
        "struct tracepoint__module__module_load",
        "BPF_HISTOGRAM(mt_hist",
        "mt_count(MT_C_LOST)",
        "mt_count(MT_C_MISSED)",
    ):
        assert needle in text, needle


def _function(text, name):
    match = re.search(rf"int {name}\(struct pt_regs \*ctx\)\n\{{\n(.*?)\n\}}", text, re.S)
    assert match, name
    return match.group(1)


def test_memtype_reserve_saves_args_granted_pointer_and_stack(default_plan):
    text = program_text(default_plan)
    probe_id = default_plan.probes.index(_probe(default_plan, "memtype_reserve"))
    entry = _function(text, f"mt_entry_{probe_id}")
    assert "e.values[0] = (u64)(u64)PT_REGS_PARM1(ctx);" in entry
    assert "e.values[1] = (u64)(u64)PT_REGS_PARM2(ctx);" in entry
    assert "e.values[2] = (u64)(u32)PT_REGS_PARM3(ctx);" in entry
    assert "e.granted_ptr = (u64)PT_REGS_PARM4(ctx);" in entry
    assert f"mt_enter(ctx, {probe_id}, &e, 1)" in entry
    ret = _function(text, f"mt_return_{probe_id}")
    assert f"mt_leave(ctx, {probe_id}, 1, (s64)(s32)PT_REGS_RC(ctx), 1, 0)" in ret


def test_void_function_keeps_its_return_probe(default_plan):
    text = program_text(default_plan)
    probe_id = default_plan.probes.index(_probe(default_plan, "ttm:ttm_move_memcpy"))
    assert "e.values[0] = (u64)(u8)PT_REGS_PARM1(ctx);" in _function(text, f"mt_entry_{probe_id}")
    # No return value, but a return probe all the same: the duration needs it.
    assert f"mt_leave(ctx, {probe_id}, 0, 0, 0, 0)" in _function(text, f"mt_return_{probe_id}")


def test_struct_fields_are_read_with_probe_read_at_the_plan_offset(default_plan):
    probe = _probe(default_plan, "drm_vram_helper:bo_driver_move")
    offset = plans.fetch_offset(probe, probe.spec.fetch[0])
    entry = _function(program_text(default_plan), f"mt_entry_{default_plan.probes.index(probe)}")
    assert f"mt_read(&e.values[0], 8, (u64)PT_REGS_PARM4(ctx) + {offset}) == 0" in entry
    assert "e.valid |= 1 << 0;" in entry


def test_aggregated_probes_keep_histograms_and_take_no_stack(default_plan):
    probe = _probe(default_plan, "memtype_reserve")
    probe_id = default_plan.probes.index(probe)
    text = program_text(default_plan, aggregated={"memtype_reserve"})
    assert "mt_enter(ctx, %d, &e, 0)" % probe_id in _function(text, f"mt_entry_{probe_id}")
    assert _function(text, f"mt_return_{probe_id}").rstrip().endswith("1, 1);")
    other = default_plan.probes.index(_probe(default_plan, "ttm:ttm_move_memcpy"))
    assert f"mt_leave(ctx, {other}, 0, 0, 0, 0)" in _function(text, f"mt_return_{other}")


def test_cflags_describe_the_plan(default_plan):
    flags = program_cflags(default_plan, ncpus=4, ringbuf=False, aggregate=True, pages=16)
    assert f"-DMT_NPROBES={len(default_plan.probes)}" in flags
    assert "-DMT_MAX_FETCH=3" in flags  # memtype_reserve fetches 3
    assert "-DMT_NCPUS=4" in flags and "-DMT_EVENT_PAGES=16" in flags
    assert f"-DMT_TRACER_PID={os.getpid()}" in flags
    assert "-DMT_AGGREGATE" in flags and "-DMT_RINGBUF" not in flags
    assert "-DMT_RINGBUF" in program_cflags(default_plan, ncpus=1)
    with pytest.raises(ValueError):
        program_cflags(default_plan, ncpus=1, pages=12)


def _record_bytes(layout, probe_id, values, valid, flags, ret=0, granted=0, cycles=0):
    return layout.pack(
        1000,
        250,
        cycles,
        ret,
        0xFFFFFFFF81234567,
        *values,
        probe_id,
        flags,
        valid,
        granted,
        42,
        43,
        7,
        1,
        b"modprobe\0\0\0\0\0\0\0\0",
    )


def test_record_layout_matches_the_c_struct():
    # 5 u64 + values + 8 u32 + comm[16], no padding (all members naturally aligned).
    assert record_struct(3).size == 5 * 8 + 3 * 8 + 8 * 4 + 16
    assert record_struct(1).size % 8 == 0


def test_record_decodes_to_a_memtype_reserve_event(default_plan):
    probe = _probe(default_plan, "memtype_reserve")
    probe_id = default_plan.probes.index(probe)
    layout = record_struct(3)
    data = _record_bytes(
        layout,
        probe_id,
        [0xFD000000, 0xFD3E8000, 1],
        valid=0b111,
        flags=F_RET | F_GRANTED,
        granted=2,
    )
    record = parse_record(layout, data)
    assert record["probe"] == probe_id and record["comm"] == "modprobe"
    assert record["pid"] == 42 and record["tid"] == 43 and record["stack_id"] == 7
    call = raw_call(
        probe, record, tsc_mhz=2000.0, stack=["memtype_reserve"], caller="__ioremap_caller"
    )
    event = decode.to_event(probe, call)
    assert (event.start, event.end) == (0xFD000000, 0xFD3E8000)
    assert (event.requested, event.granted, event.granted_from) == ("WC", "UC-", "return")
    assert event.ret == 0 and event.duration_ns == 250
    assert (event.cycles, event.cycles_source) == (500, "tsc")
    assert event.caller == "__ioremap_caller" and event.stack == ["memtype_reserve"]


def test_record_flags_decide_what_is_known(default_plan):
    probe = _probe(default_plan, "ioremap_wc")
    layout = record_struct(3)
    # Pointer return: shown unsigned. Fetch 1 not valid: left out. PMU cycles win over TSC.
    record = parse_record(
        layout,
        _record_bytes(
            layout,
            default_plan.probes.index(probe),
            [0xFD000000, 0, 0],
            valid=0b1,
            flags=F_RET | F_PMU,
            ret=-0x5A0000000000,
            cycles=777,
        ),
    )
    call = raw_call(probe, record, tsc_mhz=2000.0)
    assert call.values == {"start": 0xFD000000}
    assert call.ret == (1 << 64) - 0x5A0000000000
    assert (call.cycles, call.cycles_source) == (777, "pmu")
    assert call.granted_raw is None
    void = parse_record(layout, _record_bytes(layout, 0, [0, 0, 0], valid=0, flags=0, ret=5))
    assert raw_call(_probe(default_plan, "ttm:ttm_move_memcpy"), void).ret is None
    assert raw_call(probe, void).cycles is None  # no PMU, no TSC rate


def test_clean_frames_drops_machinery_above_the_probed_function():
    frames = [
        "kprobe_ftrace_handler",
        "0xffffffffc054e0c8",
        "memtype_reserve",
        "__ioremap_caller",
        "bochs_pci_probe [bochs]",
    ]
    assert clean_frames(frames, "memtype_reserve") == frames[2:]
    assert clean_frames(frames, "not_in_stack") == frames[2:]
    assert clean_frames(["bochs_pci_probe [bochs]"], "x") == ["bochs_pci_probe [bochs]"]


KALLSYMS = """\
ffffffff81000000 T ioremap
ffffffffc0656320 T drm_atomic_helper_commit\t[drm_kms_helper]
ffffffffc0656320 U drm_atomic_helper_commit\t[bochs]
ffffffffc0700000 t bochs_pci_probe\t[bochs]
ffffffffc0800000 t bo_driver_move\t[drm_vram_helper]
ffffffffc0900000 t bo_driver_move\t[qxl]
"""


def index_of(tmp_path, text):
    (tmp_path / "kallsyms").write_text(text)
    return kallsyms.ModuleIndex(str(tmp_path / "kallsyms"), str(tmp_path / "modules"))


def test_module_owners_counts_code_symbols_only(tmp_path):
    index = index_of(tmp_path, KALLSYMS)
    assert index.owners("drm_atomic_helper_commit") == {"drm_kms_helper"}
    assert index.owners("bo_driver_move") == {"drm_vram_helper", "qxl"}
    assert index.owners("ioremap") == set()


def test_pick_module_corrects_bccs_undefined_symbol_attribution(tmp_path):
    owners = index_of(tmp_path, KALLSYMS).owners
    # bcc read bochs' undefined entry for an import: the code lives in drm_kms_helper.
    helper = pick_module(
        MODULE_AREA, "drm_atomic_helper_commit", "bochs", owners("drm_atomic_helper_commit")
    )
    assert helper == "drm_kms_helper"
    assert (
        pick_module(MODULE_AREA, "bochs_pci_probe", "bochs", owners("bochs_pci_probe")) == "bochs"
    )
    assert pick_module(MODULE_AREA, "bo_driver_move", "qxl", owners("bo_driver_move")) == "qxl"
    # vmlinux addresses are vmlinux, whatever module bcc names.
    assert pick_module(0xFFFFFFFF81000010, "ioremap", "bochs", owners("ioremap")) is None
    assert pick_module(0xFFFFFFFF81000010, "ioremap", "kernel", owners("ioremap")) is None
    # A module-area name kallsyms no longer lists (freed init code): trust bcc.
    assert pick_module(MODULE_AREA, "bochs_init", "bochs", owners("bochs_init")) == "bochs"


class _FakeBPF:
    """Stands in for bcc.BPF's static symbol API."""

    _sym_caches = {}
    table = {}

    @classmethod
    def ksym(cls, address, show_module=False, show_offset=False):
        cls._sym_caches.setdefault(-1, object())
        return cls.table.get(address, b"[unknown]")


def test_kernel_symbolizer_formats_and_refreshes_on_module_change(tmp_path):
    kallsyms_path, modules_path = tmp_path / "kallsyms", tmp_path / "modules"
    kallsyms_path.write_text(KALLSYMS)
    modules_path.write_text("drm_kms_helper 1 0 - Live 0x0\n")
    _FakeBPF.table = {
        0xFFFFFFFF81000005: b"ioremap+0x5 [kernel]",
        0xFFFFFFFFC0656330: b"drm_atomic_helper_commit+0x10 [bochs]",
    }
    symbolize = KernelSymbolizer(_FakeBPF, str(kallsyms_path), str(modules_path))
    assert symbolize.frames([0xFFFFFFFF81000005, 0xFFFFFFFFC0656330, 0xFFFFFFFFC0999999]) == [
        "ioremap",
        "drm_atomic_helper_commit [drm_kms_helper]",
        "0xffffffffc0999999",
    ]
    assert -1 in _FakeBPF._sym_caches
    assert not symbolize.check()  # nothing changed
    modules_path.write_text("drm_kms_helper 1 0 - Live 0x0\nbochs 1 0 - Loading 0x0\n")
    assert symbolize.check()  # a module appeared: bcc's cache is dropped
    assert -1 not in _FakeBPF._sym_caches
    with_offsets = KernelSymbolizer(
        _FakeBPF, str(kallsyms_path), str(modules_path), keep_offset=True
    )
    assert with_offsets(0xFFFFFFFFC0656330) == "drm_atomic_helper_commit+0x10 [drm_kms_helper]"


def test_first_error_picks_the_clang_error_line():
    output = (
        "In file included from /virtual/main.c:2:\n"
        "/virtual/main.c:40:5: warning: unused variable 'x'\n"
        "/virtual/main.c:52:9: error: use of undeclared identifier 'foo'\n"
        "/virtual/main.c:60:9: error: another\n"
    )
    assert bcc_backend.first_error(output) == (
        "/virtual/main.c:52:9: error: use of undeclared identifier 'foo'"
    )
    assert bcc_backend.first_error("") == ""


def test_the_c_file_and_the_python_side_agree():
    with open(bcc_backend.PROGRAM_FILE) as stream:
        text = stream.read()
    for index, name in enumerate(bcc_backend.COUNTER_NAMES):
        assert re.search(rf"#define MT_C_\w+ {index}\b", text), name
    assert f"#define MT_NCOUNTERS {len(bcc_backend.COUNTER_NAMES)}" in text
    for flag, value in (("MT_F_RET", F_RET), ("MT_F_GRANTED", F_GRANTED), ("MT_F_PMU", F_PMU)):
        assert f"#define {flag} {value}" in text
    assert f"#define MT_MODNAME_LEN {bcc_backend.MODNAME_LEN}" in text


def test_mtrr_probes_read_their_arguments_and_restore_the_sign(default_plan):
    text = program_text(default_plan)
    add = _probe(default_plan, "mtrr_add_page")
    entry = _function(text, f"mt_entry_{default_plan.probes.index(add)}")
    assert "e.values[2] = (u64)(u32)PT_REGS_PARM3(ctx);" in entry  # the MTRR type
    assert f"mt_enter(ctx, {default_plan.probes.index(add)}, &e, 1)" in entry
    delete = _probe(default_plan, "mtrr_del_page")
    delete_id = default_plan.probes.index(delete)
    # int reg: kept zero-extended in the record; decoding gives -1 back.
    assert "e.values[0] = (u64)(u32)PT_REGS_PARM1(ctx);" in _function(text, f"mt_entry_{delete_id}")
    layout = record_struct(3)
    record = parse_record(
        layout,
        _record_bytes(
            layout, delete_id, [0xFFFFFFFF, 0xFD000, 0x1000], valid=0b111, flags=F_RET, ret=-22
        ),
    )
    event = decode.to_event(delete, raw_call(delete, record))
    assert (event.role, event.mtrr_reg, event.ret) == ("mtrr_del", None, -22)
    assert (event.start, event.end, event.size) == (0xFD000000, 0xFE000000, 0x1000000)
    record = parse_record(
        layout, _record_bytes(layout, delete_id, [1, 0, 0], valid=0b111, flags=F_RET, ret=1)
    )
    event = decode.to_event(delete, raw_call(delete, record))
    assert (event.mtrr_reg, event.start, event.size) == (1, None, None)


def test_mtrr_add_and_phys_wc_records_decode(default_plan):
    layout = record_struct(3)
    add = _probe(default_plan, "mtrr_add_page")
    record = parse_record(
        layout,
        _record_bytes(
            layout,
            default_plan.probes.index(add),
            [0xFD000, 0x1000, 1],
            valid=0b111,
            flags=F_RET,
            ret=1,
        ),
    )
    event = decode.to_event(add, raw_call(add, record))
    assert (event.role, event.start, event.end, event.size) == (
        "mtrr_add",
        0xFD000000,
        0xFE000000,
        0x1000000,
    )
    assert (event.mtrr_type, event.mtrr_reg, event.requested) == ("WC", 1, None)
    wc = _probe(default_plan, "arch_phys_wc_add")
    # PAT on: arch_phys_wc_add does nothing and returns 0, so no register.
    record = parse_record(
        layout,
        _record_bytes(
            layout,
            default_plan.probes.index(wc),
            [0xFD000000, 0x1000000, 0],
            valid=0b11,
            flags=F_RET,
            ret=0,
        ),
    )
    event = decode.to_event(wc, raw_call(wc, record))
    assert (event.role, event.start, event.size, event.ret) == ("phys_wc", 0xFD000000, 0x1000000, 0)
    assert (event.mtrr_type, event.mtrr_reg) == ("WC", None)

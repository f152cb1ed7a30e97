"""``--dump-program``: what record/conflicts/latency/report would attach, printed, and nothing
attached. The printed program is the backends' own output (bcc_backend.program_text and
program_cflags, TracefsBackend.program); tests/lab/test_installed_guest.py compiles and
registers it in a guest kernel."""

import re

import pytest

from memtrace.errors import FeatureMissing, MemtraceError
from memtrace.probes import bcc_backend
from memtrace.probes import dump_program as dumps
from memtrace.probes import plan as plans
from memtrace.probes.features import FAIL, OK, WARN, Check
from memtrace.probes.kallsyms import KernelSymbol
from memtrace.probes.targets import SymbolSource
from memtrace.probes.tracefs_backend import TracefsBackend
from memtrace.tools import cli
from tests.unit.test_bcc_backend import _kallsyms_with_every_target

COMMANDS = ("record", "conflicts", "latency", "report")


class FakeFeatures:
    """The KernelFeatures a dump reads: symbols, checks and which backends work."""

    release = "6.12.0-test"

    def __init__(self, live=True, bcc=True, ringbuf=True, kallsyms=True):
        table = _kallsyms_with_every_target()
        if ringbuf:  # BPF ring buffers (5.8): bcc's events go through one
            table._by_name["bpf_ringbuf_output"] = [
                KernelSymbol(0xFFFFFFFF81100000, "T", "bpf_ringbuf_output", None)
            ]
        self.kallsyms = (
            table if kallsyms else MemtraceError("cannot read /proc/kallsyms", "mount /proc")
        )
        self.symbol_source = SymbolSource(table) if kallsyms else None
        self.root_check = Check("root", OK, "running as root")
        self.kprobes_check = Check(
            "kprobes",
            OK if live else FAIL,
            "kprobe_events" if live else "CONFIG_KPROBES is not set",
        )
        self.bcc_check = Check(
            "bcc",
            OK if bcc else WARN,
            "bcc 0.26.0" if bcc else "bcc 0.26.0 imports, but no kernel headers",
        )
        self.backends = {"bcc": live and bcc, "tracefs": live}
        self.live_probing = live

    def verdict(self):
        return "live probing possible" if self.live_probing else "no kprobes: use `memtrace lab`"


@pytest.fixture(autouse=True)
def _no_kernel(monkeypatch):
    """Nothing here may read this machine's kernel or attach anything."""
    monkeypatch.setattr(dumps, "btf_offset_resolver", lambda _features: lambda *_: None)
    monkeypatch.setattr(dumps, "possible_cpus", lambda: 4)

    def no_session(*_args, **_kwargs):
        raise AssertionError("--dump-program must not start a trace")

    monkeypatch.setattr("memtrace.probes.session.TraceSession", no_session)
    monkeypatch.setattr("memtrace.tools.record.TraceSession", no_session)


def _use(monkeypatch, features):
    monkeypatch.setattr(dumps, "running_kernel_features", lambda allow_mount=True: features)


def _plan():
    source = SymbolSource(_kallsyms_with_every_target())
    return plans.build_plan(plans.DEFAULT_TARGETS, source, lambda *_: None, strict=False)


def _comment_and_code(text):
    assert text.startswith("/*\n"), text[:200]
    comment, _, code = text.partition("\n */\n")
    return comment, code


def _cflags(comment):
    return re.search(r"^ \* cflags: (.*)$", comment, re.M).group(1).split()


def test_bcc_dump_is_the_backends_program_with_its_flags_and_the_probe_table(monkeypatch, capsys):
    _use(monkeypatch, FakeFeatures())
    assert cli.main(["conflicts", "--dump-program", "--backend", "bcc"]) == 0
    out = capsys.readouterr().out
    comment, code = _comment_and_code(out)
    plan = _plan()
    # The very program and flags the backend compiles (nothing rebuilt here).
    assert code == bcc_backend.program_text(plan)
    assert _cflags(comment) == bcc_backend.program_cflags(plan, 4, ringbuf=True)
    assert "memtrace conflicts --dump-program" in comment and "nothing was attached" in comment
    assert "backend bcc (chosen with --backend)" in comment
    for index, probe in enumerate(plan.probes):
        row = re.search(
            rf"^ \* {index}\s+{re.escape(probe.fn)}\s+{re.escape(probe.probe_name)}"
            rf"\s.*mt_entry_{index}/mt_return_{index}$",
            comment,
            re.M,
        )
        assert row, (probe.fn, comment)
    assert "could not attach" not in comment


def test_tracefs_dump_is_the_backends_lines_with_fallbacks_and_triggers(monkeypatch, capsys):
    _use(monkeypatch, FakeFeatures())
    assert cli.main(["record", "-o", "unused.jsonl", "--dump-program", "--backend", "tracefs"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    expected = TracefsBackend(_plan(), None, {})
    assert lines == expected.program()
    group = expected.group
    assert re.search(
        rf"^# before Linux 6.9 \(no \$argN at return\): "
        rf"r:{group}/memtype_reserve__ret memtype_reserve ret=\$retval:s32$",
        out,
        re.M,
    )
    assert (
        f"# then: echo stacktrace > instances/memtrace-{expected.pid}/events/{group}/"
        "memtype_reserve/trigger"
    ) in out
    assert "(>>, never >)" in out
    assert all(line.startswith(("p:", "r:")) for line in lines)


def test_record_dump_creates_no_trace_file(monkeypatch, capsys, tmp_path):
    _use(monkeypatch, FakeFeatures())
    target = tmp_path / "trace.jsonl"
    assert cli.main(["record", "-o", str(target), "--dump-program"]) == 0
    assert not target.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_tracing_command_dumps_and_runs_nothing(monkeypatch, capsys, tmp_path, command):
    _use(monkeypatch, FakeFeatures())
    argv = [command, "--dump-program", "--backend", "tracefs"]
    argv += {"record": ["-o", str(tmp_path / "t.jsonl")], "latency": ["--fn", "ioremap_wc"]}.get(
        command, []
    )
    marker = tmp_path / "ran"
    assert cli.main(argv + ["--", "touch", str(marker)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"# memtrace {command} --dump-program:")
    assert f"# not run: touch {marker}" in captured.out
    assert not marker.exists() and list(tmp_path.iterdir()) == []


def test_auto_takes_bcc_when_it_can_compile_and_tracefs_otherwise(monkeypatch, capsys):
    _use(monkeypatch, FakeFeatures(bcc=True))
    cli.main(["conflicts", "--dump-program"])
    assert capsys.readouterr().out.startswith("/*\n")
    _use(monkeypatch, FakeFeatures(bcc=False))
    cli.main(["conflicts", "--dump-program"])
    out = capsys.readouterr().out
    assert out.startswith("# ") and "backend tracefs (auto: bcc unusable" in out


def test_a_kernel_without_kprobes_still_gets_the_dump_and_one_note(monkeypatch, capsys):
    _use(monkeypatch, FakeFeatures(live=False, bcc=False))
    assert cli.main(["conflicts", "--dump-program"]) == 0
    captured = capsys.readouterr()
    assert "# a run could not attach them here: cannot trace: no kprobes" in captured.out
    assert "auto would choose it: bcc unusable" in captured.out
    assert any(line.startswith("p:") for line in captured.out.splitlines())
    notes = captured.err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith(
        "memtrace conflicts: note: printed what tracefs would attach; a run could not"
    )


def test_without_kernel_symbols_it_is_one_line_and_exit_2(monkeypatch, capsys):
    _use(monkeypatch, FakeFeatures(kallsyms=False))
    assert cli.main(["conflicts", "--dump-program"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "cannot read /proc/kallsyms" in lines[0], lines


def test_latency_sums_non_moves_in_the_kernel_as_a_run_would(monkeypatch, capsys):
    _use(monkeypatch, FakeFeatures())
    cli.main(["latency", "--fn", "memtype_reserve", "--dump-program", "--backend", "bcc"])
    comment, code = _comment_and_code(capsys.readouterr().out)
    assert "-DMT_AGGREGATE" in _cflags(comment)
    assert re.search(r"^ \* 0\s+memtype_reserve\s.*\(summed in kernel\)", comment, re.M)
    assert "-DMT_NPROBES=1" in _cflags(comment)
    # --cycles needs every call: nothing summed.
    cli.main(
        ["latency", "--fn", "memtype_reserve", "--cycles", "--dump-program", "--backend", "bcc"]
    )
    comment, _ = _comment_and_code(capsys.readouterr().out)
    assert "-DMT_AGGREGATE" not in _cflags(comment) and "summed" not in comment


def test_latency_of_a_move_also_plans_the_default_targets_unsummed(monkeypatch, capsys):
    _use(monkeypatch, FakeFeatures())
    cli.main(["latency", "--fn", "ttm_move_memcpy", "--dump-program", "--backend", "bcc"])
    comment, _ = _comment_and_code(capsys.readouterr().out)
    assert f"-DMT_NPROBES={len(plans.DEFAULT_TARGETS)}" in _cflags(comment)
    assert "summed" not in comment and "-DMT_AGGREGATE" not in _cflags(comment)


@pytest.mark.parametrize("command", ("conflicts", "latency", "report"))
def test_dump_refuses_a_recorded_trace(monkeypatch, capsys, command):
    _use(monkeypatch, FakeFeatures())
    argv = [command, "-i", "trace.jsonl", "--dump-program"]
    if command == "latency":
        argv += ["--fn", "ioremap"]
    assert cli.main(argv) == 2
    assert "--dump-program shows what live tracing would attach" in capsys.readouterr().err


def test_a_name_that_does_not_resolve_is_an_error_only_when_asked_for(monkeypatch, capsys):
    _use(monkeypatch, FakeFeatures())
    assert cli.main(["latency", "--fn", "no_such_function", "--dump-program"]) == 2
    assert "no_such_function" in capsys.readouterr().err
    with pytest.raises(FeatureMissing):
        dumps.resolve_plan(["no_such_function"], FakeFeatures())


def test_possible_cpus_counts_ranges(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real function, reading a file of ours
    monkeypatch.setitem(__import__("sys").modules, "bcc.utils", None)
    path = tmp_path / "possible"
    path.write_text("0-3,6,8-9\n")
    assert dumps.possible_cpus(str(path)) == 7
    assert dumps.possible_cpus(str(tmp_path / "missing")) >= 1

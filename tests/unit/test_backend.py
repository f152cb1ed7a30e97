"""The backend interface: what every backend declares, and its notes and cleanup problems
reaching the trace footer and the outputs instead of being dropped."""

import pytest

from memtrace.probes import backend as backend_module
from memtrace.probes.backend import Backend, footer_fields, reader_notes
from memtrace.probes.bcc_backend import BccBackend
from memtrace.probes.module_watch import ModuleWatch, change_notes, parse_proc_modules
from memtrace.probes.tracefs_backend import TracefsBackend
from memtrace.tools.tracing_io import read_recorded_trace
from memtrace.tracefile import TraceWriter
from tests.unit.test_bcc_backend import default_plan  # noqa: F401 - a fixture
from tests.unit.test_tracefs_backend import guest_plan


def test_both_backends_implement_the_whole_interface(default_plan):  # noqa: F811
    bcc = BccBackend(default_plan, print)
    tracefs = TracefsBackend(guest_plan("6.1"), print, {"tracefs_dir": "/nonexistent"})
    for be in (bcc, tracefs):
        assert isinstance(be, Backend)
        assert be.notes == [] and be.cleanup_problems == []
        assert be.histograms() == {} and be.totals() == {}
    assert (bcc.name, bcc.has_histograms, bcc.returns_carry_arguments) == ("bcc", True, True)
    # tracefs learns at attach whether the kernel takes $argN in return probes (6.9+).
    assert (tracefs.name, tracefs.has_histograms) == ("tracefs", False)
    assert tracefs.returns_carry_arguments is None
    assert tracefs.aggregated == frozenset()


def test_a_backend_missing_part_of_the_interface_cannot_be_made():
    class Partial(Backend):
        name = "partial"

        def attach(self):
            pass

        def poll(self, timeout):
            pass

        def detach(self):
            pass

    with pytest.raises(TypeError, match="returns_carry_arguments"):
        Partial(None, print)


def test_the_footer_keeps_notes_and_cleanup_problems(default_plan):  # noqa: F811
    be = BccBackend(default_plan, print)
    be.notes.append("events through perf buffers")
    be.cleanup_problems.append("removing instances/memtrace-12: Device or resource busy")
    fields = footer_fields(be)
    assert fields["backend_notes"] == ["events through perf buffers"]
    assert fields["cleanup_problems"] == ["removing instances/memtrace-12: Device or resource busy"]
    assert fields["lost_events"] == 0 and fields["attach_failures"] == []


def test_reader_notes_say_each_note_and_what_to_do_about_leftovers():
    notes = reader_notes(
        ["events through a BPF ring buffer"],
        ["deleting memtrace_7/memtype_reserve: Device or resource busy"],
    )
    assert notes[0] == "Backend: events through a BPF ring buffer."
    assert "deleting memtrace_7/memtype_reserve: Device or resource busy" in notes[1]
    assert "memtrace doctor --cleanup" in notes[1]
    assert reader_notes([], []) == []


@pytest.mark.parametrize("hostile", ["a string", 5, {"a": 1}, None, [1, None, ["x"]]])
def test_reader_notes_skip_what_a_foreign_trace_put_there(hostile):
    assert reader_notes(hostile, hostile) == []


def write_trace(path, footer_extra):
    with open(path, "wb") as stream:
        writer = TraceWriter(
            stream,
            {
                "kernel": "6.1.0-test",
                "probes": [],
                "skipped": [],
                "backend": {"name": "tracefs", "reason": "test"},
            },
        )
        writer.footer({"lost_events": 0, "missed_returns": 0, "seconds": 1.0, **footer_extra})


def test_a_recorded_traces_backend_notes_reach_every_output(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(
        path,
        {
            "backend_notes": ["module bochs was unloaded 2.0 s into the trace"],
            "cleanup_problems": ["removing instances/memtrace-9: Device or resource busy"],
        },
    )
    source = read_recorded_trace(str(path))
    assert "Backend: module bochs was unloaded 2.0 s into the trace." in source.notes
    assert any(
        "instances/memtrace-9" in note and "doctor --cleanup" in note for note in source.notes
    )


def test_an_older_trace_without_the_fields_reads_as_before(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(path, {})
    assert not [n for n in read_recorded_trace(str(path)).notes if n.startswith("Backend")]


# -- modules unloaded while tracing --------------------------------------------------------


class Probe:
    def __init__(self, probe_name, module):
        self.probe_name, self.module = probe_name, module


PROBES = [
    Probe("memtype_reserve", None),
    Probe("bochs:bochs_hw_init", "bochs"),
    Probe("drm_vram_helper:bo_driver_move", "drm_vram_helper"),
]
MODULES = (
    "bochs 40960 0 - Live 0xffffffffc0400000\n"
    "drm_vram_helper 24576 1 bochs, Live 0xffffffffc0300000\n"
    "ttm 98304 2 drm_vram_helper, Live 0xffffffffc0200000\n"
)


def test_proc_modules_names():
    assert parse_proc_modules(MODULES) == {"bochs", "drm_vram_helper", "ttm"}


def test_an_unloaded_probed_module_is_noted_with_its_probes():
    notes = change_notes({"bochs", "ttm"}, {"ttm"}, {"bochs": ["bochs:bochs_hw_init"]}, 3.25)
    assert notes == [
        "module bochs was unloaded 3.2 s into the trace: its probes "
        "(bochs:bochs_hw_init) were detached by the kernel; the events before "
        "are kept, the other probes went on"
    ]


def test_module_watch_reads_proc_modules_between_intervals(tmp_path):
    modules = tmp_path / "modules"
    modules.write_text(MODULES)
    now = [100.0]
    watch = ModuleWatch(PROBES, interval=1.0, path=str(modules), clock=lambda: now[0])
    modules.write_text(MODULES.splitlines(keepends=True)[2])  # rmmod bochs drm_vram_helper
    now[0] = 100.5
    assert watch.check() == []  # within the interval: not read yet
    now[0] = 101.5
    notes = watch.check()
    assert [n.split(":")[0] for n in notes] == [
        "module bochs was unloaded 1.5 s into the trace",
        "module drm_vram_helper was unloaded 1.5 s into the trace",
    ]
    assert watch.check(force=True) == []  # said once
    modules.write_text(MODULES)
    now[0] = 103.0
    assert watch.check() == [
        "module bochs was loaded again 3.0 s into the trace",
        "module drm_vram_helper was loaded again 3.0 s into the trace",
    ]


def test_a_first_load_is_no_note_and_vmlinux_only_plans_read_nothing(tmp_path):
    modules = tmp_path / "modules"
    modules.write_text("")
    watch = ModuleWatch(PROBES, path=str(modules), clock=lambda: 0.0)
    modules.write_text(MODULES)
    assert watch.check(force=True) == []
    assert ModuleWatch(PROBES[:1], path="/nonexistent").check(force=True) == []
    assert backend_module.BackendStats().as_dict()["attached"] == []

"""`--format openmetrics`: what a fleet's Prometheus reads, checked with the official Python
client's parsers (the Prometheus text format and OpenMetrics), on the lab guests' captures,
hostile names, and the textfile node_exporter reads (replaced atomically, never through a
symlink)."""

import json
import os
import re
import stat

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from memtrace import __version__
from memtrace.analysis.snapshot import Finding
from memtrace.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK
from memtrace.probes.pci import PciBar, PciDevice
from memtrace.tools import bench as bench_tool
from memtrace.tools import openmetrics
from memtrace.tools.cli import main
from tests.conftest import FIXTURES

BOCHS_BAR0 = PciBar(0, 0xFD000000, 0xFE000000, 0x42208, True)
# Labels whose values may be anything a snapshot's machine wrote; all others are from fixed
# sets or have a fixed shape.
FREE_LABELS = {"driver", "kernel"}
FIXED_SHAPES = {
    "slot": r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]",
    "device": r"[0-9a-f]{4}:[0-9a-f]{4}",
    "bar": r"[0-5]",
    "type": r"WB|WC|UC-|UC|WT|WP|none|unknown|other",
    "kind": r"uncached-framebuffer|overlapping-types|pat-disabled",
    "command": r"snapshot|bench",
    "version": re.escape(__version__),
    "mapping": r"anonymous|dumb|fbdev|sysfs|sysfs-wc",
    "operation": r"write|read|copy",
}


def snapshot_metrics(capsys, capture):
    status = main(
        ["snapshot", "--root", os.path.join(FIXTURES, capture), "--format", "openmetrics"]
    )
    return status, capsys.readouterr().out


def samples(text, name):
    """``{frozenset(labels.items()): value}`` of family ``name``, parsed by both parsers
    (which must agree)."""
    found = []
    for parse in (parse_text, parse_openmetrics):
        family = next((f for f in parse(text) if f.name == name), None)
        assert family is not None, name
        assert family.type == "gauge"
        found.append({frozenset(s.labels.items()): s.value for s in family.samples})
    assert found[0] == found[1]
    return found[0]


def ones(text, name):
    """The label sets of family ``name`` whose value is 1, as dicts."""
    return [dict(labels) for labels, value in samples(text, name).items() if value == 1]


@pytest.mark.parametrize(
    "capture, framebuffer, uncached_findings",
    [
        ("guest-6.1-bochs", "UC-", 1),
        ("guest-6.12-bochs", "UC-", 1),
        ("guest-6.1-qxl", "WC", 0),
        ("guest-6.12-qxl", "WC", 0),
    ],
)
def test_lab_captures_give_the_framebuffer_type_and_findings(
    capsys, capture, framebuffer, uncached_findings
):
    status, text = snapshot_metrics(capsys, capture)
    assert status == (EXIT_FINDINGS if uncached_findings else EXIT_OK)
    driver = "bochs-drm" if "bochs" in capture else "qxl"
    assert ones(text, "memtrace_display_framebuffer_type") == [
        {
            "slot": "0000:00:02.0",
            "device": "1234:1111" if driver == "bochs-drm" else "1b36:0100",
            "driver": driver,
            "bar": "0",
            "type": framebuffer,
        }
    ]
    assert len(samples(text, "memtrace_display_framebuffer_type")) == 8
    findings = {dict(k)["kind"]: v for k, v in samples(text, "memtrace_findings").items()}
    assert findings == {
        "uncached-framebuffer": uncached_findings,
        "overlapping-types": 0,
        "pat-disabled": 0,
    }
    assert samples(text, "memtrace_pat_enabled") == {frozenset(): 1}
    assert samples(text, "memtrace_pat_list_readable") == {frozenset(): 1}
    series = "6.1.0" if "-6.1-" in capture else "6.12."
    (info,) = ones(text, "memtrace_info")
    assert info["command"] == "snapshot" and info["version"] == __version__
    assert info["kernel"].startswith(series)


def test_bochs_mappings_in_the_framebuffer_bar_are_counted_by_type(capsys):
    _status, text = snapshot_metrics(capsys, "guest-6.1-bochs")
    counts = {
        dict(k)["type"]: v
        for k, v in samples(text, "memtrace_display_framebuffer_reservations").items()
    }
    # The whole BAR (bochs' ioremap) and TTM's downgraded ioremap_wc, both UC-.
    assert counts == {"UC-": 2, "WB": 0, "WC": 0, "UC": 0, "WT": 0, "WP": 0, "other": 0}


def test_every_family_has_help_and_type_and_no_unbounded_labels(capsys):
    texts = [
        snapshot_metrics(capsys, "guest-6.1-bochs")[1],
        bench_tool.render(
            json.loads(
                open(os.path.join(FIXTURES, "bench", "6.12-bochs-iomem-relaxed.json")).read()
            ),
            "openmetrics",
        ),
    ]
    for text in texts:
        names = {
            line.split()[0].split("{")[0] for line in text.splitlines() if not line.startswith("#")
        }
        for name in names:
            assert f"# HELP {name} " in text and f"# TYPE {name} gauge\n" in text
        assert text.endswith("\n# EOF\n")
        for family in parse_openmetrics(text):
            for sample in family.samples:
                assert sample.timestamp is None
                for label, value in sample.labels.items():
                    if label in FREE_LABELS:
                        continue
                    assert re.fullmatch(FIXED_SHAPES[label], value), (label, value)


def test_the_same_machine_gives_the_same_text_twice(capsys):
    """No time, pid or counter in the output: a series is the same series every run."""
    assert snapshot_metrics(capsys, "guest-6.12-bochs") == snapshot_metrics(
        capsys, "guest-6.12-bochs"
    )


HOSTILE = (
    'evil"} memtrace_pat_enabled 0\n# TYPE x counter\\\r\x1b]0;pwn\x07\u202egnp.'
    "\x00\x85\udcff" + "\\n" + "é" * 200
)


def test_hostile_driver_and_kernel_names_parse_back_inert():
    device = PciDevice("0000:00:02.0", 0x030000, 0x1234, 0x1111, 0, 0, HOSTILE, (BOCHS_BAR0,))
    text = openmetrics.render(openmetrics.snapshot_families(HOSTILE, True, [], [device], []))
    # One line per sample: nothing in a name starts a line of its own.
    help_and_type, sample_lines, eof = 2 * 6, 1 + 1 + 1 + 8 + 7 + 3, 1
    assert len(text.splitlines()) == help_and_type + sample_lines + eof
    assert not re.search(r"^memtrace_pat_enabled 0$", text, re.M)
    assert "# TYPE x" not in text.replace("\\n# TYPE x", "")
    for labels in samples(text, "memtrace_display_framebuffer_type"):
        driver = dict(labels)["driver"]
        assert len(driver) == openmetrics.MAX_LABEL_CHARS
        assert driver.startswith('evil"} memtrace_pat_enabled 0\n# TYPE x counter\\')
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e\ud800-\udfff]", driver)
        assert "\ufffd]0;pwn\ufffd\ufffdgnp." in driver
    (info,) = ones(text, "memtrace_info")
    assert info["kernel"].startswith('evil"} memtrace_pat_enabled 0\n')
    assert samples(text, "memtrace_pat_enabled") == {frozenset(): 1}
    text.encode("utf-8")  # no lone surrogate reaches the file


@pytest.mark.parametrize(
    "value, escaped",
    [
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
        ("a\tb", "a\ufffdb"),
        ("a\x7fb\u2028", "a\ufffdb\ufffd"),
        (None, ""),
        ("x" * 300, "x" * 128),
    ],
)
def test_label_values_are_escaped_as_the_format_says(value, escaped):
    assert openmetrics.label_value(value) == escaped


def test_unreadable_pat_list_and_unknown_pat_state():
    device = PciDevice("0000:00:02.0", 0x030000, 0x1234, 0x1111, 0, 0, "bochs-drm", (BOCHS_BAR0,))
    text = openmetrics.render(openmetrics.snapshot_families("6.1", None, None, [device], []))
    assert samples(text, "memtrace_pat_list_readable") == {frozenset(): 0}
    assert samples(text, "memtrace_pat_enabled") == {}  # unknown: no sample
    assert [d["type"] for d in ones(text, "memtrace_display_framebuffer_type")] == ["unknown"]
    assert samples(text, "memtrace_display_framebuffer_reservations") == {}


def test_pat_disabled_is_zero_and_counted_as_a_finding():
    device = PciDevice(
        "0000:00:02.0",
        0x030000,
        0x1234,
        0x1111,
        0,
        0,
        "bochs-drm",
        (BOCHS_BAR0, PciBar(2, 0xFEBF0000, 0xFEBF1000, 0x40200)),
    )
    finding = Finding("pat-disabled", 0xFD000000, 0xFE000000, "PAT is disabled")
    text = openmetrics.render(
        openmetrics.snapshot_families("6.1", False, None, [device], [finding])
    )
    assert samples(text, "memtrace_pat_enabled") == {frozenset(): 0}
    findings = {dict(k)["kind"]: v for k, v in samples(text, "memtrace_findings").items()}
    assert findings["pat-disabled"] == 1


def test_a_display_device_without_a_driver_mapping_is_none():
    from memtrace.analysis.snapshot import analyze_snapshot
    from memtrace.probes.pat_memtype import PatReservation

    device = PciDevice("0000:00:02.0", 0x030000, 0x1234, 0x1111, 0, 0, None, (BOCHS_BAR0,))
    # Only a small WC mapping inside the BAR, none spanning it.
    report = analyze_snapshot([PatReservation(0xFD000000, 0xFD001000, "WC")], [], [device])
    text = openmetrics.render(
        openmetrics.snapshot_families("6.1", True, report.reservations, [device], report.findings)
    )
    assert [d["type"] for d in ones(text, "memtrace_display_framebuffer_type")] == ["none"]
    assert ones(text, "memtrace_display_framebuffer_type")[0]["driver"] == ""
    counts = {
        dict(k)["type"]: v
        for k, v in samples(text, "memtrace_display_framebuffer_reservations").items()
    }
    assert counts["WC"] == 1


def test_bench_metrics_are_bytes_per_second_per_mapping_type_and_operation():
    doc = json.loads(open(os.path.join(FIXTURES, "bench", "6.12-bochs-iomem-relaxed.json")).read())
    text = bench_tool.render(doc, "openmetrics")
    rates = samples(text, "memtrace_bench_bytes_per_second")
    key = frozenset(
        {
            "slot": "0000:00:02.0",
            "device": "1234:1111",
            "driver": "bochs-drm",
            "mapping": "sysfs",
            "type": "UC",
            "operation": "write",
        }.items()
    )
    sysfs = next(m for m in doc["mappings"] if m["kind"] == "sysfs")
    assert rates[key] == sysfs["figures"]["write"]["median_mbps"] * 1e6
    measured = sum(1 for m in doc["mappings"] for f in m["figures"].values() if f)
    assert len(rates) == measured
    assert list(samples(text, "memtrace_bench_host_honours_memory_types").values()) == [0]
    (info,) = ones(text, "memtrace_info")
    assert info["command"] == "bench" and info["kernel"] == doc["kernel"]


def test_bench_without_a_types_verdict_has_no_honours_sample():
    doc = json.loads(open(os.path.join(FIXTURES, "bench", "6.1-bochs-user.json")).read())
    doc["verdict"]["honoured"] = None
    text = bench_tool.render(doc, "openmetrics")
    assert samples(text, "memtrace_bench_host_honours_memory_types") == {}
    types = {dict(k)["type"] for k in samples(text, "memtrace_bench_bytes_per_second")}
    assert "unknown" in types  # not root: the dumb buffer's type is unknown


# -- the textfile ----------------------------------------------------------------------------


def _snapshot_to(path, *extra, capture="guest-6.1-bochs"):
    metrics = ("snapshot", "--format", "openmetrics", "-o", str(path))
    return main([*metrics, "--root", os.path.join(FIXTURES, capture), *extra])


def test_textfile_is_readable_by_node_exporter_and_replaced_whole(tmp_path, capsys):
    path = tmp_path / "memtrace.prom"
    assert _snapshot_to(path) == EXIT_FINDINGS
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert capsys.readouterr() == ("", "")  # quiet: a timer runs it
    first = path.read_text()
    assert first.endswith("# EOF\n")
    with open(path) as reader:  # a scrape in progress
        assert _snapshot_to(path, capture="guest-6.1-qxl") == EXIT_ERROR  # no --force
        assert "exists" in capsys.readouterr().err
        assert _snapshot_to(path, "--force", capture="guest-6.1-qxl") == EXIT_OK
        # Renamed over, not rewritten in place: the reader still has the whole old file.
        assert reader.read() == first
    assert 'driver="qxl"' in path.read_text() and path.read_text().endswith("# EOF\n")
    assert sorted(os.listdir(tmp_path)) == ["memtrace.prom"]  # no temporary left


def test_textfile_refuses_a_symlink_even_with_force(tmp_path, capsys):
    target = tmp_path / "precious"
    target.write_text("keep\n")
    link = tmp_path / "memtrace.prom"
    link.symlink_to(target)
    assert _snapshot_to(link, "--force") == EXIT_ERROR
    err = capsys.readouterr().err
    assert "symlink" in err and err.count("\n") == 1
    assert target.read_text() == "keep\n" and link.is_symlink()


def test_a_failing_snapshot_leaves_the_old_textfile(tmp_path, capsys):
    path = tmp_path / "memtrace.prom"
    path.write_text("old\n")
    status = main(
        [
            "snapshot",
            "--root",
            str(tmp_path / "missing"),
            "--format",
            "openmetrics",
            "-o",
            str(path),
            "--force",
        ]
    )
    assert status == EXIT_ERROR
    assert path.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["memtrace.prom"]


def test_json_flag_still_works_and_contradicting_formats_are_refused(capsys):
    root = os.path.join(FIXTURES, "guest-6.1-qxl")
    assert main(["snapshot", "--root", root, "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["findings"] == []
    assert main(["snapshot", "--root", root, "--format", "json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["findings"] == []
    assert main(["snapshot", "--root", root, "--json", "--format", "openmetrics"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "contradict" in err and err.count("\n") == 1


def test_bench_writes_its_textfile_the_same_way(tmp_path, monkeypatch, capsys):
    doc = json.loads(open(os.path.join(FIXTURES, "bench", "6.12-qxl-iomem-relaxed.json")).read())
    monkeypatch.setattr(bench_tool, "run_bench", lambda slot, size, runs: doc)
    path = tmp_path / "memtrace-bench.prom"
    assert main(["bench", "--format", "openmetrics", "-o", str(path)]) == EXIT_OK
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert samples(path.read_text(), "memtrace_bench_bytes_per_second")
    link = tmp_path / "link.prom"
    link.symlink_to(path)
    assert main(["bench", "--format", "openmetrics", "-o", str(link), "--force"]) == EXIT_ERROR
    assert "symlink" in capsys.readouterr().err


def test_help_text_is_escaped_too():
    family = openmetrics.Family("memtrace_x", 'a \\ b\nc "d"', (((), 1),))
    text = openmetrics.render([family])
    assert text.splitlines()[0] == '# HELP memtrace_x a \\\\ b\\nc "d"'
    assert next(iter(parse_text(text))).documentation == 'a \\ b\nc "d"'

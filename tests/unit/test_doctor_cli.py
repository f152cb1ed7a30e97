"""`memtrace doctor` as a user runs it: on this machine, then on made-up results."""

import gzip
import json
import os

import pytest

from memtrace.probes.features import FAIL, INFO, OK, WARN, Check, parse_kconfig
from memtrace.tools import cli, doctor


def _running_kernel_lacks_kprobes():
    """The premise of the live test: no kprobes in the kernel config and no kprobe PMU."""
    if os.path.isdir("/sys/bus/event_source/devices/kprobe"):
        return False
    release = os.uname().release
    try:
        with open(f"/boot/config-{release}") as stream:
            text = stream.read()
    except OSError:
        try:
            with gzip.open("/proc/config.gz", "rt") as stream:
                text = stream.read()
        except OSError:
            return False
    return "CONFIG_KPROBES" in parse_kconfig(text) and not parse_kconfig(text)["CONFIG_KPROBES"]


needs_kernel_without_kprobes = pytest.mark.skipif(
    not _running_kernel_lacks_kprobes(),
    reason="premise: the running kernel has no kprobes (true of the 6.18 build this project "
    "develops on); this kernel has them",
)


@needs_kernel_without_kprobes
def test_doctor_json_on_a_kernel_without_kprobes(capsys):
    # --no-mount: a unit test must not mount debugfs/tracefs on the machine it runs on;
    # the kprobes verdict does not depend on it (no config option, no perf kprobe PMU).
    status = cli.main(["doctor", "--json", "--no-mount"])
    report = json.loads(capsys.readouterr().out)
    checks = {check["name"]: check for check in report["checks"]}
    assert status == 1
    assert checks["kprobes"]["status"] == "fail"
    assert report["live_probing"] is False
    assert report["backends"] == {"bcc": False, "tracefs": False}
    assert "memtrace snapshot" in report["verdict"] and "memtrace lab" in report["verdict"]
    assert checks["memtype_reserve"]["status"] == "ok"
    assert report["kernel"] == os.uname().release


@needs_kernel_without_kprobes
def test_doctor_text_on_a_kernel_without_kprobes(capsys):
    status = cli.main(["doctor", "--no-mount"])
    out = capsys.readouterr().out
    assert status == 1
    lines = out.splitlines()
    assert any(line.startswith("FAIL  kprobes ") for line in lines)
    assert any(line.startswith("ok    memtype_reserve ") for line in lines)
    assert "      hint: live probing is impossible" in out
    verdict = " ".join(lines[lines.index("") + 1 :])
    assert verdict.startswith("verdict: no kprobes")
    assert "`memtrace snapshot`" in verdict and "`memtrace lab`" in verdict
    assert max(len(line) for line in lines) < 100


class _Features:
    """Stands in for KernelFeatures with fixed checks."""

    release = "9.9.9-test"
    backends = {"bcc": True, "tracefs": True}

    def __init__(self, checks, live=True):
        self._checks = checks
        self.live_probing = live

    def checks(self):
        return self._checks

    def verdict(self):
        return "live probing possible (backends: bcc, tracefs)"


def _run_with(monkeypatch, checks, *argv):
    monkeypatch.setattr(doctor, "running_kernel_features", lambda allow_mount: _Features(checks))
    return cli.main(["doctor", *argv])


def test_exit_status_is_0_when_only_warnings_and_information(monkeypatch, capsys):
    checks = [
        Check("kprobes", OK, "fine"),
        Check("bcc", WARN, "no headers", "install them"),
        Check("cycle-counter", INFO, "no PMU"),
    ]
    assert _run_with(monkeypatch, checks) == 0
    out = capsys.readouterr().out
    assert "WARN  bcc" in out and "      hint: install them" in out
    assert "verdict: live probing possible" in out


def test_exit_status_is_1_when_a_check_failed(monkeypatch, capsys):
    assert _run_with(monkeypatch, [Check("kprobes", FAIL, "none", "use memtrace lab")]) == 1
    assert "FAIL  kprobes" in capsys.readouterr().out


def test_json_lists_every_check(monkeypatch, capsys):
    checks = [Check("kprobes", OK, "fine"), Check("root", FAIL, "uid 1000", "run with sudo")]
    _run_with(monkeypatch, checks, "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["checks"][1] == {
        "name": "root",
        "status": "fail",
        "detail": "uid 1000",
        "hint": "run with sudo",
    }
    assert report["live_probing"] is True
    assert report["pat"] is None  # the stand-in has no PAT state


def _nopat_guest_features(tmp_path):
    from memtrace.probes import features
    from tests.unit.test_features import build_lab_like, write

    root = str(tmp_path)
    release = build_lab_like(root)
    write(root, "/proc/cmdline", "root=hostroot ro nopat\n")
    write(
        root,
        "/kernel-log",
        "x86/PAT: PAT support disabled via boot option.\n"
        "x86/PAT: Configuration [0-7]: WB  WT  UC- UC  WB  WT  UC- UC  \n",
    )
    os.remove(os.path.join(root, "sys/kernel/debug/x86/pat_memtype_list"))
    return features.KernelFeatures(root=root, release=release, euid=0)


def test_pat_off_is_a_warning_with_reason_evidence_and_what_it_costs(tmp_path, monkeypatch, capsys):
    from memtrace.probes import features

    kernel = _nopat_guest_features(tmp_path)
    monkeypatch.setattr(features, "import_bcc", lambda: ("0.26.0", None))
    monkeypatch.setattr(features, "probe_cycle_counter", lambda: (None, "no PMU"))
    monkeypatch.setattr(doctor, "running_kernel_features", lambda allow_mount: kernel)
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    pat = [i for i, line in enumerate(lines) if line.startswith("WARN  pat ")]
    assert pat, out
    text = " ".join(line.strip() for line in lines[pat[0] : pat[0] + 12])
    assert (
        "PAT disabled (the kernel was booted with nopat; evidence: kernel log: x86/PAT: PAT "
        "support disabled via boot option.;" in text
    )
    assert (
        "hint: tracing still works; with PAT off every write-combining request "
        "(ioremap_wc, WC mmaps) gets UC- page bits, so framebuffer copies run uncached" in text
    )
    assert "verdict: live probing possible" in out
    assert cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pat"]["enabled"] is False
    assert report["pat"]["reason"] == "the kernel was booted with nopat"
    assert {c["name"]: c["status"] for c in report["checks"]}["pat"] == "warn"


def test_long_details_wrap_under_100_columns_and_ok_lines_have_no_hint():
    check = Check("drm_gem_vram_bo_driver_move", WARN, "word " * 60, "hint " * 40)
    lines = doctor.format_check(check)
    assert all(len(line) < 100 for line in lines)
    assert lines[0].startswith("WARN  drm_gem_vram_bo_driver_move ")
    assert any(line.startswith("      hint: ") for line in lines)
    assert doctor.format_check(Check("btf", OK, "present", "unused hint")) == [
        "ok    btf" + " " * 26 + "present"
    ]


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--help"])
    out = capsys.readouterr().out
    assert "--json" in out and "--no-mount" in out
    assert "1 when at least one check failed" in out

"""The Debian package, installed on this machine, in one lab guest boot: `/usr/bin/memtrace`
run from outside the repository on Debian's python3 and packages only (no venv) finds the
bochs downgrade, and what `--dump-program` prints compiles with bcc and registers in tracefs.

The guest's root is this machine's /, read-only, so the package installed here is the
package installed there. It is purged again when the module's tests end: while it is
installed, a `python -m memtrace` started outside the repository would import it instead of
the checkout.

Run as a script (``python3 test_installed_guest.py check BCC_DUMP TRACEFS_DUMP``) this file
is the guest's side of the checks: stdlib, bcc and the installed package only, as Debian's
python3 has them.
"""

import json
import os
import re
import subprocess
import sys
import time

try:
    import pytest
except ImportError:  # the guest's side: Debian's python3 has no pytest
    pytest = None

PACKAGE = "memtrace-pat"
SITE = "/usr/lib/python3/dist-packages"
TRACEFS = "/sys/kernel/tracing"
# Debian's python3 with an empty environment: nothing of the venv or the checkout leaks in.
CLEAN = "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp/home LANG=C.UTF-8"


# -- the guest's side (Debian's python3; no pytest there) ----------------------------------


def compile_dump(path):
    """Compile the printed BPF program with the printed cflags and load every function into
    the kernel (the verifier's verdict); attach nothing."""
    from bcc import BPF

    with open(path) as src:
        text = src.read()
    cflags = re.search(r"^ \* cflags: (.*)$", text, re.M).group(1).split()
    started = time.monotonic()
    bpf = BPF(text=text, cflags=cflags)
    compiled = time.monotonic()
    kprobes = re.findall(r"^int (mt_(?:entry|return)_\d+)\(struct pt_regs \*ctx\)$", text, re.M)
    for name in kprobes:
        bpf.load_func(name, BPF.KPROBE)
    bpf.load_func("mt_module_load", BPF.TRACEPOINT)
    bpf.cleanup()
    return {
        "cflags": cflags,
        "loaded": len(kprobes) + 1,
        "compile_s": round(compiled - started, 1),
        "load_s": round(time.monotonic() - compiled, 1),
    }


def _append(path, line):
    # O_APPEND, as the backend writes: truncating kprobe_events would delete every kprobe.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def register_dump(path):
    """Append each printed kprobe_events line (a refused return probe falls back to the
    printed plain one, as the backend does), list the group's events, delete them all."""
    with open(path) as src:
        text = src.read()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    plain = {}
    for line, name in re.findall(
        r"^# before Linux 6\.9 \(no \$argN at return\): (r:(\S+) .*)$", text, re.M
    ):
        plain[name] = line
    events_file = os.path.join(TRACEFS, "kprobe_events")
    registered, refused, fallbacks = [], [], 0
    for line in lines:
        name = line.split(" ", 1)[0].split(":", 1)[1]
        try:
            _append(events_file, line)
        except OSError as err:
            if name not in plain:
                refused.append(f"{line}: {err.strerror}")
                continue
            _append(events_file, plain[name])
            fallbacks += 1
        registered.append(name)
    group = registered[0].split("/")[0] if registered else None
    group_dir = os.path.join(TRACEFS, "events", group) if group else None
    present = (
        sorted(e for e in os.listdir(group_dir) if e not in ("enable", "filter"))
        if group_dir and os.path.isdir(group_dir)
        else []
    )
    for name in registered:
        _append(events_file, f"-:{name}")
    with open(events_file) as src:
        left = [line for line in src.read().splitlines() if group and f":{group}/" in line]
    return {
        "lines": len(lines),
        "registered": registered,
        "refused": refused,
        "fallbacks": fallbacks,
        "present": present,
        "left": left,
        "group_dir_left": bool(group_dir and os.path.exists(group_dir)),
    }


def check(bcc_dump, tracefs_dump):
    """The guest's checks in one Python (each start costs seconds under TCG): where this
    python3 and the modules come from, then both dumps; prints one JSON object."""
    import traceback

    import psutil
    import pyroute2
    import tabulate

    import memtrace

    result = {
        "python": sys.executable,
        "path": sys.path,
        "modules": [m.__file__ for m in (memtrace, tabulate, psutil, pyroute2)],
    }
    for name, action, path in (
        ("compile", compile_dump, bcc_dump),
        ("register", register_dump, tracefs_dump),
    ):
        try:
            result[name] = action(path)
        except Exception:  # reported in the JSON; the other check still runs
            result[name] = {"error": traceback.format_exc()}
    print(json.dumps(result))


# -- the host's side (pytest) --------------------------------------------------------------


def guest_script():
    """What the one boot runs, in its work directory (not the repository)."""
    this = os.path.abspath(__file__)
    run = f"{CLEAN} /usr/bin/memtrace"
    helper = f"{CLEAN} /usr/bin/python3 {this}"
    steps = [
        f"{CLEAN} sh -c 'command -v memtrace' > which.txt",
        # Before the driver loads, as a user would look first: ttm's probes are MOD:SYM.
        f"{run} conflicts --dump-program --backend bcc > dump-bcc.c 2> dump-bcc.err;"
        " echo $? > dump-bcc.rc",
        f"{run} conflicts --dump-program --backend tracefs > dump-tracefs.txt"
        " 2> dump-tracefs.err; echo $? > dump-tracefs.rc",
        f"{helper} check dump-bcc.c dump-tracefs.txt > check.json 2> check.err; echo $? > check.rc",
        f"{run} conflicts -- modprobe bochs > conflicts.txt 2> conflicts.err;"
        " echo $? > conflicts.rc",
    ]
    # Seconds since boot after each step (the guest's clock), for the time this test costs.
    return "\n".join(f"{step}\ncut -d' ' -f1 /proc/uptime >> steps.txt" for step in steps)


def _run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def _installed():
    proc = _run(["dpkg-query", "-W", "-f=${Status}", PACKAGE])
    return proc.returncode == 0 and proc.stdout.strip() == "install ok installed"


APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]


def _purge():
    return _run(APT + ["purge", PACKAGE], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


if pytest is not None:

    @pytest.fixture(scope="module")
    def installed_deb(tmp_path_factory):
        """scripts/build-deb's package installed on this machine with apt (its dependencies
        come from scripts/setup.sh, so nothing is downloaded); purged afterwards."""
        from tests.conftest import REPO as repo

        if _installed():
            pytest.fail(
                f"{PACKAGE} is already installed on this machine; this test installs "
                f"and purges it: apt purge {PACKAGE} first"
            )
        out = tmp_path_factory.mktemp("deb")
        built = _run(
            [os.path.join(repo, "scripts", "build-deb"), str(out)],
            env=dict(os.environ, PYTHON=sys.executable),
        )
        assert built.returncode == 0, built.stderr
        deb = built.stdout.strip()
        try:
            proc = _run(
                APT + ["install", "--no-install-recommends", deb],
                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
            )
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
            yield deb
        finally:
            proc = _purge()
            assert proc.returncode == 0, proc.stderr
            assert not _installed()
            assert not os.path.exists(os.path.join(SITE, "memtrace")), "left in dist-packages"
            assert not os.path.exists("/usr/bin/memtrace")

    @pytest.fixture(scope="module")
    def session(installed_deb, guest):
        return guest("6.12", "std", guest_script())


def test_installed_command_man_page_and_completion_on_this_machine(installed_deb):
    from memtrace import __version__

    proc = _run(["/usr/bin/memtrace", "--version"], cwd="/")
    assert (proc.returncode, proc.stdout) == (0, f"memtrace {__version__}\n"), proc.stderr
    page = _run(["man", "-w", "memtrace-conflicts"])
    assert page.stdout.strip() == "/usr/share/man/man8/memtrace-conflicts.8.gz", page.stderr
    text = _run(["man", "memtrace"], env=dict(os.environ, MANPAGER="cat", MANWIDTH="100"))
    assert text.returncode == 0 and "memtrace-conflicts(8)" in text.stdout
    completed = _run(
        [
            "bash",
            "--norc",
            "-c",
            "source /usr/share/bash-completion/completions/"
            "memtrace; COMP_WORDS=(memtrace con); COMP_CWORD=1; _shtab_memtrace; "
            "echo ${COMPREPLY[@]}",
        ]
    )
    assert completed.stdout.strip() == "conflicts", completed.stderr


def test_installed_metrics_timers_are_not_enabled(installed_deb):
    """The package installs the node_exporter timers (docs/metrics.md) and enables none."""
    units = (
        "memtrace-snapshot.service",
        "memtrace-snapshot.timer",
        "memtrace-bench.service",
        "memtrace-bench.timer",
    )
    for unit in units:
        assert os.path.isfile(f"/lib/systemd/system/{unit}"), unit
    enabled = [
        os.path.join(top, name)
        for top, _dirs, names in os.walk("/etc/systemd")
        for name in names
        if name.startswith("memtrace")
    ]
    assert enabled == []
    listed = _run(["dpkg-query", "-L", PACKAGE]).stdout.split()
    assert all(f"/lib/systemd/system/{unit}" in listed for unit in units)


def _checks(session):
    assert session.read("check.rc").strip() == "0", session.read("check.err")
    return json.loads(session.read("check.json"))


def test_guest_runs_debians_python_and_the_installed_modules_only(session):
    assert session.proc.returncode == 0, session.proc.stderr[-3000:]
    assert session.read("which.txt").strip() == "/usr/bin/memtrace"
    result = _checks(session)
    assert result["python"] == "/usr/bin/python3"
    assert all(m.startswith(SITE + "/") for m in result["modules"]), result["modules"]
    from tests.conftest import REPO

    # sys.path[0] is this helper's own directory; nothing else of the checkout or a venv.
    leaked = [p for p in result["path"][1:] if ".venv" in p or p.startswith(REPO)]
    assert not leaked, result["path"]


def test_installed_conflicts_finds_the_bochs_downgrade(session):
    err = session.read("conflicts.err")
    assert session.read("conflicts.rc").strip() == "1", err
    text = session.read("conflicts.txt")
    assert re.search(r"^1\. downgrade WC -> UC-.* on fd000000-fd3e8000 ", text, re.M), text
    assert "with bcc" in err, err


def test_dumped_bpf_program_compiles_and_loads_in_the_guest(session):
    assert session.read("dump-bcc.rc").strip() == "0", session.read("dump-bcc.err")
    assert session.read("dump-bcc.err") == ""  # root and kprobes there: no note
    dump = session.read("dump-bcc.c")
    assert dump.startswith("/*\n * memtrace conflicts --dump-program: the BPF program")
    assert "when it loads" in dump  # ttm's probes before modprobe
    result = _checks(session)["compile"]
    assert "error" not in result, result.get("error")
    functions = len(re.findall(r"^int mt_(?:entry|return)_\d+\(", dump, re.M))
    assert functions >= 2 * 17 and result["loaded"] == functions + 1


def test_dumped_kprobe_events_register_and_are_removed_in_the_guest(session):
    assert session.read("dump-tracefs.rc").strip() == "0", session.read("dump-tracefs.err")
    result = _checks(session)["register"]
    assert "error" not in result, result.get("error")
    assert result["refused"] == [] and result["fallbacks"] == 0  # 6.12 reads $argN at return
    assert len(result["registered"]) == result["lines"] >= 2 * 17
    assert sorted(name.split("/")[1] for name in result["registered"]) == result["present"]
    assert any("ttm_move_memcpy" in name for name in result["registered"])
    assert result["left"] == [] and not result["group_dir_left"]


if __name__ == "__main__" and sys.argv[1:2] == ["check"]:
    check(*sys.argv[2:4])

"""The distribution installs one import namespace, `memtrace`, and nothing generic."""

import os
import re
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


def _build_wheel(out_dir):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out_dir),
            REPO,
        ],
        check=True,
        capture_output=True,
    )
    wheels = [name for name in os.listdir(out_dir) if name.endswith(".whl")]
    assert len(wheels) == 1, wheels
    return os.path.join(out_dir, wheels[0])


def test_wheel_has_only_the_memtrace_namespace(tmp_path):
    wheel = _build_wheel(tmp_path)
    assert os.path.basename(wheel).startswith("memtrace_pat-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"memtrace"}
    for package in ("tools", "probes", "analysis", "lab"):
        assert f"memtrace/{package}/__init__.py" in names
    assert "memtrace/lab/guest-init.sh" in names
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = {
        line.split()[1]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    # bcc is Debian's python3-bpfcc: PyPI's "bcc" is an unrelated library.
    assert requires == {"tabulate", "psutil", "pyroute2"}


def test_fresh_venv_imports_and_runs_the_console_script(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True
    )
    # The runtime dependencies come from this test's own environment, not the network.
    site = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tabulate, os; print(os.path.dirname(os.path.dirname(tabulate.__file__)))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--no-deps", wheel],
        check=True,
        capture_output=True,
    )
    site_packages = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    installed = {
        n
        for n in os.listdir(site_packages)
        if not n.startswith(("_", "pip", "setuptools", "pkg_resources", "distutils"))
    }
    assert {n for n in installed if not n.endswith(".dist-info")} == {"memtrace"}
    env = dict(os.environ, PYTHONPATH=site)
    proc = subprocess.run(
        [str(venv / "bin/memtrace"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("memtrace ")
    proc = subprocess.run(
        [str(venv / "bin/python"), "-m", "memtrace", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        check=False,
    )
    assert proc.returncode == 0 and "snapshot" in proc.stdout


# -- Python 3.9 ----------------------------------------------------------------------------

PACKAGE_SOURCES = ("memtrace", "tools", "probes", "analysis", "lab")


def _vermin(*paths, cwd=REPO):
    # vermin has no __main__; this is its console script, run by the tests' interpreter.
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, vermin; sys.exit(vermin.main())",
            "--config-file",
            os.path.join(REPO, "setup.cfg"),
            *paths,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def test_the_package_runs_on_python_3_9():
    """vermin (setup.cfg [vermin]: target 3.9-) finds nothing in the package newer than 3.9,
    the python_requires RHEL 9's python3 meets."""
    proc = _vermin(*PACKAGE_SOURCES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"Minimum required versions: 3\.(\d+)", proc.stdout)
    assert found and int(found.group(1)) <= 9, proc.stdout
    with open(os.path.join(REPO, "setup.cfg")) as src:
        assert "python_requires = >=3.9" in src.read()


def test_the_version_check_fails_on_newer_python(tmp_path):
    (tmp_path / "new.py").write_text(
        "def f(x):\n    match x:\n        case 1:\n            return (y := 2)\n"
    )
    proc = _vermin(str(tmp_path / "new.py"), cwd=str(tmp_path))
    assert proc.returncode != 0 and "3.10" in proc.stdout, proc.stdout


# -- the Debian package --------------------------------------------------------------------

DEB_DEPENDS = {"python3", "python3-tabulate", "python3-psutil", "python3-pyroute2"}
LAB_PACKAGES = ("qemu", "linux-image", "chromium", "initramfs", "ovmf", "seabios")


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    """scripts/build-deb's package, built into a temporary directory."""
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(
        [os.path.join(REPO, "scripts", "build-deb"), str(out)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    from memtrace import __version__

    assert path == str(out / f"memtrace-pat_{__version__}_all.deb")
    return path


def _field(deb, name):
    return subprocess.run(
        ["dpkg-deb", "-f", deb, name], capture_output=True, text=True, check=True
    ).stdout.strip()


def _names(relation):
    return {
        alt.strip().split(" ")[0]
        for part in relation.split(",")
        for alt in part.split("|")
        if alt.strip()
    }


def test_deb_control_depends_on_debian_12_packages_only(deb):
    from memtrace import __version__

    assert _field(deb, "Package") == "memtrace-pat"
    assert _field(deb, "Version") == __version__
    assert _field(deb, "Architecture") == "all"
    depends = _names(_field(deb, "Depends"))
    assert depends == DEB_DEPENDS
    # setup.cfg's install_requires, each as Debian names it.
    with open(os.path.join(REPO, "setup.cfg")) as src:
        requires = re.search(r"install_requires =\n((?:    .*\n)+)", src.read()).group(1)
    names = {re.split(r"[<>=!~ ]", line.strip())[0] for line in requires.splitlines()}
    assert {f"python3-{name}" for name in names} == depends - {"python3"}
    assert "python3-pyroute2 (>= 0.7.2)" in _field(deb, "Depends")  # bookworm's
    recommends = _names(_field(deb, "Recommends"))
    assert "python3-bpfcc" in recommends and "linux-headers-amd64" in recommends
    assert "python3-ujson" in recommends  # the faster decoder Debian 12 has
    for name in depends | recommends:
        assert not name.startswith(LAB_PACKAGES), name


def test_deb_installs_the_command_modules_man_pages_and_completion(deb, tmp_path):
    listing = subprocess.run(
        ["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True
    ).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    site = "/usr/lib/python3/dist-packages"
    assert "/usr/bin/memtrace" in files
    assert re.search(r"^-rwxr-xr-x root/root .* \./usr/bin/memtrace$", listing, re.M)
    for path in (
        "memtrace/tools/cli.py",
        "memtrace/probes/bcc_program.c",
        "memtrace/probes/dump_program.py",
        "memtrace/lab/guest-init.sh",
        "memtrace/analysis/conflicts.py",
    ):
        assert f"{site}/{path}" in files, path
    top = {f.split("/")[5] for f in files if f.startswith(site + "/") and f.count("/") > 5}
    assert {t for t in top if not t.endswith(".dist-info")} == {"memtrace"}
    pages = {f for f in files if f.startswith("/usr/share/man/man8/") and f.endswith(".gz")}
    from memtrace.tools.cli import SUBCOMMANDS

    assert pages == {"/usr/share/man/man8/memtrace.8.gz"} | {
        f"/usr/share/man/man8/memtrace-{name}.8.gz" for name in SUBCOMMANDS
    }
    assert "/usr/share/bash-completion/completions/memtrace" in files
    assert "/usr/share/doc/memtrace-pat/copyright" in files
    scripts = subprocess.run(
        ["dpkg-deb", "-I", deb, "postinst", "prerm"], capture_output=True, text=True, check=True
    ).stdout
    assert "py3compile -p memtrace-pat" in scripts and "py3clean -p memtrace-pat" in scripts


def test_deb_command_runs_on_debians_python3_from_a_throwaway_root(deb, tmp_path):
    """dpkg -x, then the installed command with /usr/bin/python3 and Debian's packages only
    (scripts/setup.sh installs python3-tabulate, -psutil, -pyroute2), outside the repo."""
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(root / "usr/lib/python3/dist-packages"),
    }
    command = ["/usr/bin/python3", str(root / "usr/bin/memtrace")]
    proc = subprocess.run(
        command + ["--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        check=False,
    )
    from memtrace import __version__

    assert (proc.returncode, proc.stdout) == (0, f"memtrace {__version__}\n"), proc.stderr
    where = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            "import memtrace.tools.cli, tabulate, psutil, pyroute2; "
            "print(memtrace.__file__); print(tabulate.__file__); print(psutil.__file__); "
            "print(pyroute2.__file__)",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        check=True,
    ).stdout.split()
    assert where[0].startswith(str(root)), where
    assert all(p.startswith("/usr/lib/python3/dist-packages/") for p in where[1:]), where
    proc = subprocess.run(
        command + ["conflicts", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        check=False,
    )
    assert proc.returncode == 0 and "--dump-program" in proc.stdout, proc.stderr
    man = root / "usr/share/man/man8/memtrace-conflicts.8.gz"
    text = subprocess.run(
        ["sh", "-c", f"zcat '{man}' | groff -man -Tascii -P-cbou -ww"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert text.stderr == "" and "OVERHEAD" in text.stdout and "EXAMPLES" in text.stdout


# -- the metrics timers (docs/metrics.md) --------------------------------------------------

UNITS = (
    "memtrace-snapshot.service",
    "memtrace-snapshot.timer",
    "memtrace-bench.service",
    "memtrace-bench.timer",
)
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def test_deb_ships_the_metrics_timers_disabled(deb, tmp_path):
    listing = subprocess.run(
        ["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True
    ).stdout
    files = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    assert {f"/lib/systemd/system/{unit}" for unit in UNITS} <= files
    # Nothing enables them: no wants/ symlink shipped, no maintainer script enables one.
    assert not [f for f in files if f.startswith("/etc/systemd") or ".wants/" in f]
    scripts = subprocess.run(
        ["dpkg-deb", "-I", deb, "postinst", "prerm"], capture_output=True, text=True, check=True
    ).stdout
    assert not re.search(r"systemctl\s+(?:--\S+\s+)*enable|deb-systemd-helper", scripts)
    assert "systemctl stop memtrace-snapshot.timer memtrace-bench.timer" in scripts
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True)
    units = root / "lib/systemd/system"
    snapshot = (units / "memtrace-snapshot.service").read_text()
    assert (
        f"ExecStart=/usr/bin/memtrace snapshot --format openmetrics -o "
        f"{TEXTFILE_DIR}/memtrace.prom --force\n"
    ) in snapshot
    assert "SuccessExitStatus=1\n" in snapshot  # findings are not a failure
    bench = (units / "memtrace-bench.service").read_text()
    assert f"-o {TEXTFILE_DIR}/memtrace-bench.prom --force\n" in bench
    assert "OnUnitActiveSec=5min" in (units / "memtrace-snapshot.timer").read_text()
    assert "OnUnitActiveSec=6h" in (units / "memtrace-bench.timer").read_text()
    for timer in ("memtrace-snapshot.timer", "memtrace-bench.timer"):
        assert "WantedBy=timers.target" in (units / timer).read_text()


def test_metrics_units_pass_systemd_analyze_verify(deb, tmp_path):
    """``systemd-analyze verify`` on the installed tree (dpkg -x): the units parse without a
    warning and their ExecStart is the package's /usr/bin/memtrace. The targets they name
    come from this machine's systemd."""
    import shutil

    if shutil.which("systemd-analyze") is None or not os.path.isdir("/lib/systemd/system"):
        pytest.skip("systemd-analyze is not installed here")
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True)
    units = root / "lib/systemd/system"
    for name in os.listdir("/lib/systemd/system"):
        source = os.path.join("/lib/systemd/system", name)
        if name.endswith((".target", ".slice")) and os.path.isfile(source):
            shutil.copy(source, units / name)
    proc = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            f"--root={root}",
            *[str(units / unit) for unit in UNITS],
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr

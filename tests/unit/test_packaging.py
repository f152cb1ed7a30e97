"""The distribution installs one import namespace, `memtrace`, and nothing generic."""

import os
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def _build_wheel(out_dir):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out_dir), REPO], check=True, capture_output=True)
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
    requires = {line.split()[1] for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    # bcc is Debian's python3-bpfcc: PyPI's "bcc" is an unrelated library.
    assert requires == {"tabulate", "psutil", "pyroute2"}


def test_fresh_venv_imports_and_runs_the_console_script(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    # The runtime dependencies come from this test's own environment, not the network.
    site = subprocess.run([sys.executable, "-c", "import tabulate, os; "
                           "print(os.path.dirname(os.path.dirname(tabulate.__file__)))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", wheel], check=True,
                   capture_output=True)
    site_packages = subprocess.run(
        [str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    installed = {n for n in os.listdir(site_packages)
                 if not n.startswith(("_", "pip", "setuptools", "pkg_resources", "distutils"))}
    assert {n for n in installed if not n.endswith(".dist-info")} == {"memtrace"}
    env = dict(os.environ, PYTHONPATH=site)
    proc = subprocess.run([str(venv / "bin/memtrace"), "--version"], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("memtrace ")
    proc = subprocess.run([str(venv / "bin/python"), "-m", "memtrace", "--help"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), check=False)
    assert proc.returncode == 0 and "snapshot" in proc.stdout

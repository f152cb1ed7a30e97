"""The lab's pure parts: which directories the guest gets, the command script, kernel choice."""

import os
import shlex

import pytest

from memtrace.errors import LabError
from memtrace.lab import kernels, qemu


def test_workdir_is_shared_writable_and_hidden_install_paths_read_only():
    shares = qemu.plan_shares("/work/proj", ["/tmp/clone", "/work/proj/.venv", "/usr"])
    assert ("workdir", "rw", "/work/proj") in shares
    # /tmp is a tmpfs in the guest: a checkout there must come back, read-only.
    assert any(mode == "ro" and path == "/tmp/clone" for _tag, mode, path in shares)
    # Visible through the read-only root or the workdir already: not shared twice.
    assert not any(path in ("/usr", "/work/proj/.venv") for _tag, _mode, path in shares)


def test_command_script_runs_the_exact_argv_in_the_workdir():
    script = qemu._command_script(["sh", "-c", "echo 'a b'; exit 3"], "/work/my dir")
    lines = script.splitlines()
    assert lines[-2] == "cd -- '/work/my dir' || exit 125"
    assert shlex.split(lines[-1]) == ["exec", "sh", "-c", "echo 'a b'; exit 3"]


def test_qemu_command_has_the_bochs_device_and_read_only_root(tmp_path):
    kernel = kernels.LabKernel("6.1.0-56-amd64", "/boot/vmlinuz-6.1.0-56-amd64", "/lib/modules/x")
    cmd = qemu.qemu_command(kernel, "/cache/initrd", str(tmp_path), [], vga="std")
    assert cmd[cmd.index("-vga") + 1] == "std"
    assert any("path=/,mount_tag=hostroot" in arg and "readonly=on" in arg for arg in cmd)
    append = cmd[cmd.index("-append") + 1]
    assert f"init={qemu.GUEST_INIT}" in append and "panic=-1" in append
    assert "-enable-kvm" not in cmd
    with pytest.raises(LabError, match="unknown --vga"):
        qemu.qemu_command(kernel, "/cache/initrd", str(tmp_path), [], vga="cirrus")


def test_kernel_selection_by_series_and_release(tmp_path):
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    for release in ("6.1.0-56-amd64", "6.12.117+deb12-amd64"):
        os.makedirs(modules / release / "kernel")
        os.makedirs(boot, exist_ok=True)
        (boot / f"vmlinuz-{release}").write_bytes(b"")
    assert kernels.select_kernel(None, str(boot), str(modules)).release == "6.12.117+deb12-amd64"
    assert kernels.select_kernel("6.1", str(boot), str(modules)).release == "6.1.0-56-amd64"
    with pytest.raises(LabError) as missing:
        kernels.select_kernel("6.12", str(tmp_path / "none"), str(modules))
    assert "apt-get install linux-image-6.12-amd64" in missing.value.one_line()


@pytest.mark.parametrize("device", qemu.DISPLAY_DEVICES)
def test_device_replaces_the_vga_one_and_takes_the_first_free_slot(tmp_path, device):
    kernel = kernels.LabKernel("6.12.117+deb12-amd64", "/boot/vmlinuz-x", "/lib/modules/x")
    cmd = qemu.qemu_command(kernel, "/cache/initrd", str(tmp_path), [], vga="none", device=device)
    assert cmd[cmd.index("-vga") + 1] == "none"
    assert cmd[cmd.index("-device") + 1] == device
    # Added before the 9p devices, it gets 00:02.0 as a -vga device does.
    assert cmd.index("-device") < cmd.index("-virtfs")


def test_device_with_a_vga_model_or_unknown_is_refused(tmp_path):
    kernel = kernels.LabKernel("6.12.117+deb12-amd64", "/boot/vmlinuz-x", "/lib/modules/x")
    with pytest.raises(LabError, match="both add a display device"):
        qemu.qemu_command(
            kernel, "/cache/initrd", str(tmp_path), [], vga="std", device="virtio-vga"
        )
    with pytest.raises(LabError, match="unknown --device 'vmware-svga'"):
        qemu.qemu_command(
            kernel, "/cache/initrd", str(tmp_path), [], vga="none", device="vmware-svga"
        )


def test_lab_refuses_a_vga_model_and_a_device_together(run_memtrace):
    proc = run_memtrace("lab", "--vga", "std", "--device", "bochs-display", "--", "true")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "both add a display device" in proc.stderr

"""Build (once, then cache) an initramfs that can mount the host's root over virtio-9p.

Debian's stock initrd lacks the 9p modules; a copy of /etc/initramfs-tools with a module
list of just what the lab needs builds in about two seconds and is a sixth of the size.
"""

import os
import shutil
import subprocess
import tempfile

from memtrace.errors import LabError

LAB_MODULES = ("9p", "9pnet_virtio", "virtio_pci", "netfs")
# Bump when the recipe changes so stale cached images are rebuilt.
RECIPE_VERSION = "1"


def initramfs_path(cache_dir, kernel):
    """Where the cached lab initramfs of ``kernel`` lives."""
    return os.path.join(cache_dir, f"initrd-{kernel.release}-lab{RECIPE_VERSION}.img")


def ensure_initramfs(cache_dir, kernel, source_conf="/etc/initramfs-tools"):
    """Return the path of ``kernel``'s lab initramfs, building it when not cached yet."""
    target = initramfs_path(cache_dir, kernel)
    if os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(kernel.image):
        return target
    if shutil.which("mkinitramfs") is None:
        raise LabError("mkinitramfs not found", "install it with: apt-get install initramfs-tools")
    if not os.path.isdir(source_conf):
        raise LabError(f"{source_conf} is missing", "apt-get install initramfs-tools")
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="memtrace-initramfs-") as work:
        conf = os.path.join(work, "conf")
        shutil.copytree(source_conf, conf, symlinks=True)
        _set_option(os.path.join(conf, "initramfs.conf"), "MODULES", "list")
        with open(os.path.join(conf, "modules"), "a", encoding="utf-8") as modules:
            modules.write("\n" + "\n".join(LAB_MODULES) + "\n")
        partial = target + ".partial"
        proc = subprocess.run(
            ["mkinitramfs", "-d", conf, "-o", partial, kernel.release],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise LabError(f"mkinitramfs for {kernel.release} failed: {last}")
        os.replace(partial, target)
    return target


def _set_option(path, key, value):
    with open(path, encoding="utf-8") as conf:
        lines = conf.read().splitlines()
    lines = [line for line in lines if not line.startswith(f"{key}=")]
    lines.append(f"{key}={value}")
    with open(path, "w", encoding="utf-8") as conf:
        conf.write("\n".join(lines) + "\n")

"""Find the Debian kernels the lab can boot; say which package to install when one is missing."""

import dataclasses
import os
import re

from memtrace.errors import LabError

# Series a user may name, and the Debian packages that provide them (bookworm).
SERIES_PACKAGES = {
    "6.1": ("linux-image-amd64", "linux-headers-amd64"),
    "6.12": ("linux-image-6.12-amd64", "linux-headers-6.12-amd64"),
}


@dataclasses.dataclass(frozen=True)
class LabKernel:
    """An installed kernel: its release string, image and module directory."""

    release: str
    image: str
    modules_dir: str

    @property
    def series(self):
        """The major.minor series of this release, e.g. '6.12'."""
        return ".".join(self.release.split(".")[:2])

    @property
    def headers_dir(self):
        """Where bcc looks for this kernel's headers."""
        return os.path.join(self.modules_dir, "build")


def _release_key(release):
    return [int(part) for part in re.findall(r"\d+", release)]


def installed_kernels(boot_dir="/boot", modules_root="/lib/modules"):
    """Return the kernels with both an image in ``boot_dir`` and modules, newest first."""
    found = []
    try:
        names = os.listdir(boot_dir)
    except OSError:
        names = []
    for name in names:
        if not name.startswith("vmlinuz-"):
            continue
        release = name[len("vmlinuz-") :]
        modules_dir = os.path.join(modules_root, release)
        if os.path.isdir(os.path.join(modules_dir, "kernel")):
            found.append(LabKernel(release, os.path.join(boot_dir, name), modules_dir))
    return sorted(found, key=lambda k: _release_key(k.release), reverse=True)


def _install_hint(wanted):
    packages = SERIES_PACKAGES.get(wanted)
    if packages:
        return f"install it with: apt-get install {' '.join(packages)}"
    if "-" in wanted:  # a full Debian release such as 6.1.0-56-amd64
        return f"install it with: apt-get install linux-image-{wanted} linux-headers-{wanted}"
    known = "; ".join(
        f"{series}: apt-get install {' '.join(p)}" for series, p in SERIES_PACKAGES.items()
    )
    return f"the lab knows the Debian series {known}"


def select_kernel(wanted=None, boot_dir="/boot", modules_root="/lib/modules"):
    """Return the kernel matching ``wanted`` (a series like '6.12', a full release, or None
    for the newest installed one), or raise LabError naming the package to install."""
    kernels = installed_kernels(boot_dir, modules_root)
    if wanted is None:
        if not kernels:
            raise LabError(
                "no kernel for the lab is installed",
                _install_hint("6.12") + " (or linux-image-amd64 for 6.1)",
            )
        return kernels[0]
    for kernel in kernels:
        if kernel.release == wanted:
            return kernel
    for kernel in kernels:
        if kernel.series == wanted:
            return kernel
    have = ", ".join(k.release for k in kernels) or "none"
    raise LabError(
        f"no installed kernel matches '{wanted}' (installed: {have})", _install_hint(wanted)
    )


def check_headers(kernel):
    """A one-line problem when ``kernel``'s headers (needed by bcc) are missing, else None."""
    if os.path.isdir(os.path.join(kernel.headers_dir, "include")):
        return None
    packages = SERIES_PACKAGES.get(kernel.series)
    package = packages[1] if packages else f"linux-headers-{kernel.release}"
    return (
        f"headers for {kernel.release} are missing (bcc cannot compile); apt-get install {package}"
    )

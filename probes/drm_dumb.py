"""DRM dumb buffers made the way a compositor or gdm's greeter makes them.

``DRM_IOCTL_MODE_CREATE_DUMB`` allocates a buffer object, ``DRM_IOCTL_MODE_MAP_DUMB`` gives
the fake offset to mmap it at, ``mmap()`` of the card node maps it, and
``DRM_IOCTL_MODE_DESTROY_DUMB`` frees it (include/uapi/drm/drm.h, drm_mode.h). None of this
needs root or DRM master: an open card node is enough (udev gives ``/dev/dri/card*`` to the
``video`` group, mode 0660). Render nodes cannot make dumb buffers.
"""

import fcntl
import grp
import os
import stat
import struct

from memtrace.errors import MemtraceError, os_reason

__all__ = [
    "DRM_IOCTL_MODE_CREATE_DUMB",
    "DRM_IOCTL_MODE_MAP_DUMB",
    "DRM_IOCTL_MODE_DESTROY_DUMB",
    "DRM_IOCTL_GET_CAP",
    "DumbBuffer",
    "has_dumb_buffers",
    "card_nodes",
    "open_card",
    "dumb_geometry",
]


def _iowr(nr, size):
    """``_IOWR('d', nr, size)`` (include/uapi/asm-generic/ioctl.h)."""
    return (3 << 30) | (size << 16) | (ord("d") << 8) | nr


# struct drm_mode_create_dumb { u32 height, width, bpp, flags, handle, pitch; u64 size; }
_CREATE = struct.Struct("=IIIIIIQ")
# struct drm_mode_map_dumb { u32 handle, pad; u64 offset; }
_MAP = struct.Struct("=IIQ")
# struct drm_mode_destroy_dumb { u32 handle; }
_DESTROY = struct.Struct("=I")
# struct drm_get_cap { u64 capability, value; }
_CAP = struct.Struct("=QQ")

DRM_IOCTL_MODE_CREATE_DUMB = _iowr(0xB2, _CREATE.size)
DRM_IOCTL_MODE_MAP_DUMB = _iowr(0xB3, _MAP.size)
DRM_IOCTL_MODE_DESTROY_DUMB = _iowr(0xB4, _DESTROY.size)
DRM_IOCTL_GET_CAP = _iowr(0x0C, _CAP.size)
DRM_CAP_DUMB_BUFFER = 0x1

DEV_DRI = "/dev/dri"


def dumb_geometry(nbytes):
    """``(width, height, bpp)`` of a 32-bit dumb buffer holding at least ``nbytes``: 1280
    pixels wide (the seed's 1280x800 frame is 0x3e8000 bytes) when that fits whole lines,
    else 1024 pixels (4096-byte lines)."""
    width = 1280 if nbytes % (1280 * 4) == 0 else 1024
    return width, -(-nbytes // (width * 4)), 32


def card_nodes(slot, sysfs_root="/sys"):
    """The primary DRM nodes (``/dev/dri/cardN``) of PCI device ``slot``, from
    ``/sys/bus/pci/devices/SLOT/drm/cardN``; empty when no DRM driver is bound."""
    drm_dir = os.path.join(sysfs_root, "bus", "pci", "devices", slot, "drm")
    try:
        names = os.listdir(drm_dir)
    except OSError:
        return []
    cards = sorted(
        (n for n in names if n.startswith("card") and n[4:].isdigit()), key=lambda n: int(n[4:])
    )
    return [os.path.join(DEV_DRI, n) for n in cards]


def _access_hint(path):
    """What to do when ``path`` (a card node) cannot be opened: join its group, or be root."""
    try:
        info = os.stat(path)
    except OSError:
        return "run as root"
    mode = stat.S_IMODE(info.st_mode)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    if info.st_gid != 0 and mode & 0o060 == 0o060:
        return (
            f"it belongs to group '{group}' (mode {mode:04o}): add your user to it "
            f"(sudo usermod -aG {group} $USER, then log in again), or run as root"
        )
    return (
        f"it is root's only (mode {mode:04o}, group {group}; no udev rule gave it to the "
        "video group): run as root, or give it to the video group as udev does "
        f"(chgrp video {path}; chmod 660 {path})"
    )


def open_card(path):
    """Open a card node read-write.

    :raises MemtraceError: one line naming the node and what to do (join its group, run as
        root), or why it cannot be opened.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        raise MemtraceError(
            f"cannot open {path}: permission denied", hint=_access_hint(path)
        ) from None
    except FileNotFoundError:
        raise MemtraceError(
            f"{path} does not exist", hint="is devtmpfs mounted on /dev, and the driver loaded?"
        ) from None
    except OSError as err:
        raise MemtraceError(f"cannot open {path}: {os_reason(err)}") from None


def _ioctl(fd, request, packed, what):
    buffer = bytearray(packed)
    try:
        fcntl.ioctl(fd, request, buffer, True)
    except OSError as err:
        raise OSError(err.errno, f"{what}: {os_reason(err)}") from None
    return bytes(buffer)


def has_dumb_buffers(fd):
    """True when the driver behind ``fd`` offers dumb buffers (DRM_CAP_DUMB_BUFFER), False
    when it says no, None when it cannot be asked."""
    try:
        raw = _ioctl(fd, DRM_IOCTL_GET_CAP, _CAP.pack(DRM_CAP_DUMB_BUFFER, 0), "GET_CAP")
    except OSError:
        return None
    return bool(_CAP.unpack(raw)[1])


class DumbBuffer:
    """A dumb buffer memtrace made: ``size`` bytes, to be mapped from the card node at
    ``offset``; ``close()`` destroys it (also as a context manager). Unmap it first.

    :param fd: an open card node.
    :param nbytes: at least this many bytes.
    :raises OSError: the kernel refused an ioctl (``strerror`` names which).
    """

    def __init__(self, fd, nbytes):
        self.fd = fd
        self.handle = None
        width, height, bpp = dumb_geometry(nbytes)
        raw = _ioctl(
            fd,
            DRM_IOCTL_MODE_CREATE_DUMB,
            _CREATE.pack(height, width, bpp, 0, 0, 0, 0),
            "DRM_IOCTL_MODE_CREATE_DUMB",
        )
        _h, _w, _b, _f, self.handle, self.pitch, self.size = _CREATE.unpack(raw)
        self.width, self.height, self.bpp = width, height, bpp
        try:
            raw = _ioctl(
                fd, DRM_IOCTL_MODE_MAP_DUMB, _MAP.pack(self.handle, 0, 0), "DRM_IOCTL_MODE_MAP_DUMB"
            )
        except OSError:
            self.close()
            raise
        self.offset = _MAP.unpack(raw)[2]

    def close(self):
        """Destroy the buffer; safe to call twice."""
        if self.handle is not None:
            try:
                _ioctl(
                    self.fd,
                    DRM_IOCTL_MODE_DESTROY_DUMB,
                    _DESTROY.pack(self.handle),
                    "DRM_IOCTL_MODE_DESTROY_DUMB",
                )
            except OSError:
                pass  # closing the card node frees it too
            self.handle = None

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()
        return False

"""Create output files the way a root tool must in shared directories: never through a
symlink, never readable by others, never silently over an existing file."""

import errno
import os

from memtrace.errors import BadInput


def create_private(path, force=False):
    """Open a new file at ``path`` for writing (binary), mode 0600, without following a
    symlink. An existing file is refused unless ``force``; then it is replaced, and a
    symlink is removed rather than followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    if force:
        try:
            if os.path.islink(path) or os.path.isfile(path):
                os.unlink(path)
        except OSError as err:
            raise BadInput(f"cannot replace {path}: {err.strerror}") from None
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        what = "a symlink" if os.path.islink(path) else "a file"
        raise BadInput(f"{path} exists ({what})",
                       "choose another name or pass --force to replace it") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise BadInput(f"{path} is a symlink; refusing to write through it") from None
        raise BadInput(f"cannot create {path}: {err.strerror}") from None
    return os.fdopen(fd, "wb")

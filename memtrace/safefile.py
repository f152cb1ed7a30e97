"""Create output files the way a root tool must in shared directories: never through a
symlink, never readable by others, never silently over an existing file, never over one of
the command's own inputs, and (for reports) only once the new content is complete."""

import errno
import os
import tempfile

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
        raise BadInput(
            f"{path} exists ({what})", "choose another name or pass --force to replace it"
        ) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise BadInput(f"{path} is a symlink; refusing to write through it") from None
        raise BadInput(f"cannot create {path}: {err.strerror}") from None
    return os.fdopen(fd, "wb")


def refuse_inputs(path, inputs):
    """Raise BadInput when the output ``path`` is one of ``inputs`` (the same file, by
    device and inode, whatever the names): writing it would destroy what is being read."""
    try:
        target = os.stat(path)
    except OSError:
        return
    for name in inputs:
        try:
            source = os.stat(name)
        except OSError:
            continue
        if (source.st_dev, source.st_ino) == (target.st_dev, target.st_ino):
            raise BadInput(
                f"-o {path} is the input {name}; refusing to overwrite what is being read",
                "write the report to another file",
            )


class AtomicOutput:
    """A report file written whole or not at all: the content goes to a private temporary
    file beside ``path`` (0600, created exclusively, so never through a symlink) and is
    renamed over ``path`` only by :meth:`commit`. An existing ``path`` is refused up front
    unless ``force``; a failure (a full disk, an error while analysing) leaves it as it was.
    """

    def __init__(self, path, force=False):
        self.path = path
        if not force and (os.path.lexists(path)):
            what = "a symlink" if os.path.islink(path) else "a file"
            raise BadInput(
                f"{path} exists ({what})", "choose another name or pass --force to replace it"
            )
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, self.temporary = tempfile.mkstemp(
                prefix=f".{os.path.basename(path)}.", suffix=".memtrace-tmp", dir=directory
            )
        except OSError as err:
            raise BadInput(f"cannot create {path}: {err.strerror}") from None
        self.stream = os.fdopen(fd, "wb")

    def write(self, data):
        """Write ``data`` (bytes) to the temporary file; BadInput when the disk is full."""
        try:
            self.stream.write(data)
        except OSError as err:
            self.discard()
            raise BadInput(
                f"cannot write {self.path}: {err.strerror}",
                "free some space; the previous file, if any, is untouched",
            ) from None

    def commit(self):
        """Flush, sync and rename the complete file over ``path`` (replacing a symlink
        itself, never what it points to)."""
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.rename(self.temporary, self.path)
        except OSError as err:
            self.discard()
            raise BadInput(
                f"cannot write {self.path}: {err.strerror}",
                "free some space; the previous file, if any, is untouched",
            ) from None

    def discard(self):
        """Drop the temporary file; ``path`` stays as it was."""
        try:
            self.stream.close()
        except OSError:
            pass
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass

"""The errors memtrace reports to a user: one line, what is wrong and what to do."""

import os

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class MemtraceError(Exception):
    """An error a user can act on; the CLI prints it as one line and exits non-zero."""

    exit_code = EXIT_ERROR

    def __init__(self, message, hint=None, details=()):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Extra lines shown after the one-line message (e.g. the tail of a guest's console).
        self.details = tuple(details)

    def one_line(self):
        """Return the message and, when known, what to do about it, as one line: control
        characters (a newline or an escape sequence in a path it echoes) shown escaped."""
        from memtrace.escape import text

        if self.hint:
            return text(f"{self.message}; {self.hint}")
        return text(self.message)


class NotRoot(MemtraceError):
    """The operation needs root (tracefs, debugfs, kallsyms addresses, BPF)."""


class FeatureMissing(MemtraceError):
    """The running kernel lacks something memtrace needs (kprobes, tracefs, PAT...)."""


class NotTraceable(MemtraceError):
    """A requested function does not exist or cannot be probed on this kernel."""


class BadInput(MemtraceError):
    """A file or argument memtrace was given cannot be used."""


class LabError(MemtraceError):
    """The lab guest could not be prepared, booted or did not run the command.

    Its exit status (125, as docker and chroot use) stays apart from the guest command's own.
    """

    exit_code = 125


class LabTimeout(LabError):
    """The lab guest did not finish within its time limit (124, as timeout(1) uses)."""

    exit_code = 124


def os_reason(err):
    """What ``os.strerror`` says of an OSError's errno, or the error itself when it has none."""
    return os.strerror(err.errno) if err.errno is not None else str(err)

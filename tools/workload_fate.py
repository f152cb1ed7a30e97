"""What became of the workload a tracing command ran (`-- CMD`), and what that means for the
answer: a command that failed before anything was traced is an error, never a clean report.

Every command that runs `-- CMD` (record, conflicts, latency, report) asks this module the
same three things: the footer/JSON fields, the note for the reader, and whether to stop.
"""

import shlex
import signal

from memtrace.errors import EXIT_ERROR, MemtraceError


class WorkloadFailed(MemtraceError):
    """The workload exited non-zero (or was killed) and nothing was traced meanwhile."""

    exit_code = EXIT_ERROR


def fate_fields(status, stopped_by=None):
    """The footer's and the JSON's fields for a workload's Popen ``returncode`` ``status``
    (None: no workload; negative: killed by that signal): ``workload_status`` (as given),
    ``workload_exit_code`` (exit status, or None when a signal ended it) and
    ``workload_signal`` (the signal's number, or None)."""
    signum = -status if isinstance(status, int) and status < 0 else None
    exit_code = status if isinstance(status, int) and status >= 0 else None
    fields = {"workload_status": status, "workload_exit_code": exit_code, "workload_signal": signum}
    if stopped_by is not None:
        fields["stopped_by"] = stopped_by
    return fields


def describe(workload, status, stopped_by=None):
    """One sentence on how ``workload`` (an argv) ended, or None when it exited 0 or there
    was none. ``stopped_by`` ("workload", "duration", "interrupt", "signal") tells a command
    that failed from one memtrace ended because tracing stopped first."""
    if not workload or status is None or status == 0:
        return None
    command = f"`{_quoted(workload)}`"
    if status < 0 and stopped_by not in (None, "workload"):
        why = {
            "duration": "--duration ran out",
            "interrupt": "of Ctrl-C",
            "signal": "memtrace got SIGTERM",
        }.get(stopped_by, "tracing stopped")
        return (
            f"{command} was still running when tracing stopped (because {why}); "
            f"memtrace ended it with {_signal_name(-status)}."
        )
    if status < 0:
        return f"{command} was killed by {_signal_name(-status)}: it did not finish."
    return f"{command} failed (exit status {status}): the trace may lack what it was meant to do."


def add_note(notes, workload, status, stopped_by=None):
    """Append :func:`describe`'s sentence to ``notes`` (a TraceSource's, shown by every
    renderer) when the workload did not exit 0."""
    sentence = describe(workload, status, stopped_by)
    if sentence and sentence not in notes:
        notes.append(sentence)


def check(
    workload, status, traced_anything, stopped_by=None, hint="its own messages above say why"
):
    """Raise :class:`WorkloadFailed` (with ``hint``) when ``workload`` failed on its own (not
    ended by memtrace) and nothing was traced (``traced_anything`` false): then "no
    findings" would be an answer about a run that did not happen."""
    if not workload or status is None or status == 0 or traced_anything:
        return
    if status < 0 and stopped_by not in (None, "workload"):
        return
    how = (
        f"was killed by {_signal_name(-status)}"
        if status < 0
        else f"failed with exit status {status}"
    )
    raise WorkloadFailed(f"`{_quoted(workload)}` {how} and nothing was traced", hint)


def status_of(footer):
    """(``workload_status``, ``stopped_by``) of a footer (a trace's, or a live run's
    :func:`fate_fields`); a status that is not an integer is unknown (None)."""
    footer = footer if isinstance(footer, dict) else {}
    status = footer.get("workload_status")
    if not isinstance(status, int) or isinstance(status, bool):
        status = None
    stopped_by = footer.get("stopped_by")
    return status, stopped_by if isinstance(stopped_by, str) else None


def apply(source, traced_anything=None):
    """For a TraceSource about to be reported: add the note on its workload's fate, and
    raise :class:`WorkloadFailed` when the workload failed and nothing was traced
    (``traced_anything``, default: the source has events)."""
    status, stopped_by = status_of(source.footer)
    if traced_anything is None:
        traced_anything = source.events_read > 0
    hint = (
        "its own messages above say why"
        if source.source == "live"
        else f"{source.source} holds no event: record it again with a command that works"
    )
    check(source.workload, status, traced_anything, stopped_by, hint)
    add_note(source.notes, source.workload, status, stopped_by)


def json_fields(source):
    """The workload and its fate, for a command's JSON: ``workload`` (argv or None),
    ``workload_status``, ``workload_exit_code``, ``workload_signal`` (see :func:`fate_fields`)."""
    status, _ = status_of(source.footer)
    return {"workload": source.workload, **fate_fields(status)}


def _quoted(argv):
    return shlex.join(str(word) for word in argv)


def _signal_name(number):
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"

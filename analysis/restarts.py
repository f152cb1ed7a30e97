"""Restart loops: a program that ends and is started again, over and over.

The seed's visible symptom was gdm restarting gnome-shell forever. Given the ``process``
records of a trace (docs/trace-format.md: ``exec`` and ``exit`` of thread-group leaders),
:func:`find_restart_loops` finds the programs that did that, and :func:`timeline` puts those
records, DRM uevents and memtrace events on one clock for a report.

A *restart* is a start (exec) of a program while no instance of it that the trace saw start
is running, after an earlier instance of it exited: the program went down and came back. Each
exit accounts for at most one restart. A *loop* is at least ``min_restarts`` restarts within
``window_s`` seconds (inclusive: restarts at 0, 30 and 60 s are within 60 s). So:

* a long-running program never exits and is never a loop;
* instances that run side by side (``make -j`` running ``cc1``) are not one program coming
  back: a start beside a running instance, and a restart of or into such a crowd, is no
  restart and breaks a run of restarts, so bursts that come and go are not loops however
  often they repeat;
* a start more than ``window_s`` after the previous instance's exit is a fresh start, not a
  restart: slow restarts over a long trace are no loop;
* a program run again and again, one at a time, by a script is a loop like a respawned
  daemon; :class:`RestartLoop` says how each instance ended (``failures``) so a reader can
  tell "exit status 0 every time" from "killed by SIGSEGV every time", and
  ``failures_only=True`` counts only restarts that follow a failure (non-zero status or a
  signal).

A program is its name as the kernel keeps it (``comm``, 15 characters), else its executable's
file name: an exit seen without its exec (the process started before tracing) still matches
the next start. A start whose process was gone before memtrace could name it takes the name
of its exit (memtrace gets that from the kernel: :func:`with_exit_names`). Records without
either cannot be matched and are skipped.

Defaults, and why:

* ``DEFAULT_MIN_RESTARTS = 3`` (4 starts). gdm gives up on a display after
  ``MAX_DISPLAY_FAILURES`` = 5 failures (``daemon/gdm-local-display-factory.c``) and systemd
  refuses a unit started more than ``StartLimitBurst`` = 5 times within
  ``StartLimitIntervalSec`` = 10 s (its defaults, ``DefaultStartLimit*`` in system.conf).
  Three restarts are reported before either supervisor stops trying, and are still seen in a
  trace that ends after one did; two can be one crash and one manual restart.
* ``DEFAULT_WINDOW_S = 60``. systemd's 10 s suits services that fail at once; in the seed
  every start of gnome-shell ran 4 MB framebuffer moves of 1.24 s each and the greeter showed
  for about a second before the next restart, so three restarts take well over 10 s. 60 s
  holds three restarts of a program that lives up to about 20 s each time.

Pure functions over plain records (dicts as the trace file holds them); no I/O.
"""

import dataclasses
import os
import signal
from collections import Counter
from typing import Dict, List, Optional, Tuple

__all__ = [
    "DEFAULT_MIN_RESTARTS",
    "DEFAULT_WINDOW_S",
    "RestartLoop",
    "TimelineEntry",
    "exit_description",
    "find_restart_loops",
    "program_key",
    "timeline",
    "with_exit_names",
]

DEFAULT_MIN_RESTARTS = 3
DEFAULT_WINDOW_S = 60.0
COMM_LEN = 15  # TASK_COMM_LEN - 1: what the kernel keeps of a program's name


def program_key(record):
    """The name ``record``'s program is matched by: its name cut to the kernel's 15
    characters, else its executable's file name (likewise), else None."""
    name = record.get("name")
    if not name and record.get("exe"):
        name = os.path.basename(record["exe"])
    return name[:COMM_LEN] if name else None


def with_exit_names(process_records):
    """``process_records`` in the same order, where an ``exec`` that has no name (its process
    exited and was reaped before memtrace could read /proc) takes the name, and executable
    when known, of its exit: the same pid's next record, when that is an ``exit`` (not an
    exec of another program). Records given a name are copies with ``"name_from": "exit"``;
    the others are the records given."""
    by_pid: Dict[int, list] = {}
    for record in sorted(process_records, key=lambda r: r.get("ts_ns", 0)):
        if record.get("what") in ("exec", "exit") and record.get("pid") is not None:
            by_pid.setdefault(record["pid"], []).append(record)
    named = {}
    for records in by_pid.values():
        for record, following in zip(records, records[1:]):
            if (
                record["what"] == "exec"
                and program_key(record) is None
                and following["what"] == "exit"
                and program_key(following) is not None
            ):
                named[id(record)] = dict(
                    record,
                    name=following.get("name"),
                    exe=record.get("exe") or following.get("exe"),
                    name_from="exit",
                )
    return [named.get(id(record), record) for record in process_records]


def exit_description(record):
    """How an ``exit`` record's process ended: ``"status 0"``, ``"killed by SIGKILL"``
    (``", core dumped"`` appended), or ``"unknown"``."""
    if record.get("exit_signal"):
        text = f"killed by {_signal_name(record['exit_signal'])}"
        return text + (", core dumped" if record.get("core_dumped") else "")
    if record.get("exit_code") is not None:
        return f"status {record['exit_code']}"
    return "unknown"


def _failed(record):
    return bool(record.get("exit_signal")) or bool(record.get("exit_code"))


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclasses.dataclass
class _Instance:
    key: str
    pid: int
    start: Optional[dict] = None  # the exec record; None when it started before tracing
    end: Optional[dict] = None  # the exit record, once seen
    crowded: bool = False  # another instance started while this one ran

    @property
    def start_ns(self):
        return self.start["ts_ns"] if self.start else None


@dataclasses.dataclass
class RestartLoop:
    """A program started ``count`` times (``count - 1`` restarts), each start after the
    previous instance ended. Times are nanoseconds of the kernel's monotonic clock."""

    program: str  # its executable's path when known, else its name
    name: str  # the name it is matched by (comm, 15 characters)
    count: int  # starts, the first instance included
    pids: List[int]  # one per start, in order
    first_ns: int  # the first instance's start (its exit if it started earlier)
    last_ns: int  # the last start
    exit_codes: List[int]  # statuses of the instances that exited normally, in order
    exit_signals: List[int]  # signals that killed the others, in order
    failures: int  # instances that ended with a non-zero status or a signal
    ended: int  # instances whose exit the trace holds
    parent: Optional[str] = None  # the name of the process that started them (most often)
    still_running: bool = False  # the last instance had not exited when the trace ended

    @property
    def restarts(self):
        """Starts after the first."""
        return self.count - 1

    @property
    def seconds(self):
        """From the first start to the last, in seconds."""
        return (self.last_ns - self.first_ns) / 1e9

    def exits_summary(self):
        """``"killed by SIGKILL ×4"``, ``"status 1 ×2, status 0 ×1"``: how the instances
        ended, most frequent first."""
        counts = Counter(
            [f"status {code}" for code in self.exit_codes]
            + [f"killed by {_signal_name(sig)}" for sig in self.exit_signals]
        )
        return ", ".join(f"{what} ×{n}" for what, n in counts.most_common())

    def describe(self):
        """One sentence for a report."""
        who = self.program if self.program == self.name else f"{self.name} ({self.program})"
        pids = ", ".join(str(pid) for pid in self.pids[:8])
        if len(self.pids) > 8:
            pids += f", ... ({len(self.pids)} in all)"
        sentence = (
            f"{who} was started {self.count} times in {self.seconds:.1f} s "
            f"(pids {pids}), each time after the previous one ended"
        )
        if self.ended:
            sentence += f": {self.exits_summary()}"
        if self.parent:
            sentence += f"; started by {self.parent}"
        if self.still_running:
            sentence += "; the last one was still running when the trace ended"
        return sentence + "."


def _instances_and_restarts(process_records, failures_only):
    """Replay exec/exit records; return {key: [(previous instance, restarted instance)]},
    {key: [times of starts while another instance ran]} and {key: exe path}."""
    records = sorted(
        (r for r in with_exit_names(process_records) if r.get("what") in ("exec", "exit")),
        key=lambda r: r["ts_ns"],
    )
    running: Dict[int, _Instance] = {}  # pid -> the instance it runs now
    alive: Dict[str, set] = {}  # key -> pids of instances seen starting
    ended: Dict[str, _Instance] = {}  # key -> the latest exit no restart used
    restarts: Dict[str, list] = {}
    side_by_side: Dict[str, list] = {}
    exes: Dict[str, str] = {}
    for record in records:
        pid = record.get("pid")
        key = program_key(record)
        if key and record.get("exe"):
            exes.setdefault(key, record["exe"])
        if record["what"] == "exec":
            replaced = running.pop(pid, None)
            if replaced is not None:  # exec'd another program: not an exit
                alive.get(replaced.key, set()).discard(pid)
            if key is None:
                continue
            instance = _Instance(key, pid, start=record)
            previous = ended.get(key)
            if (
                previous is not None
                and not alive.get(key)
                and (not failures_only or _failed(previous.end))
            ):
                restarts.setdefault(key, []).append((previous, instance))
                del ended[key]
            elif alive.get(key):
                side_by_side.setdefault(key, []).append(record["ts_ns"])
                instance.crowded = True
                for other in alive[key]:
                    running[other].crowded = True
            running[pid] = instance
            alive.setdefault(key, set()).add(pid)
        else:
            if pid in running:
                instance = running.pop(pid)
                alive.get(instance.key, set()).discard(pid)
            elif key is None:  # started before tracing, or exec unseen
                continue
            else:
                instance = _Instance(key, pid)
            instance.end = record
            ended[instance.key] = instance
    return restarts, side_by_side, exes


def _dense_enough(times, min_restarts, window_ns):
    """Whether some window of ``window_ns`` (inclusive) holds ``min_restarts`` of the sorted
    ``times``."""
    if min_restarts <= 0:
        return True
    low = 0
    for high, time_ns in enumerate(times):
        while time_ns - times[low] > window_ns:
            low += 1
        if high - low + 1 >= min_restarts:
            return True
    return False


def find_restart_loops(
    process_records,
    min_restarts=DEFAULT_MIN_RESTARTS,
    window_s=DEFAULT_WINDOW_S,
    failures_only=False,
):
    """The restart loops among ``process`` records (see the module's docstring).

    :param process_records: ``exec`` and ``exit`` records (dicts with ``what``, ``ts_ns``,
        ``pid``, ``name``/``exe`` and, for exits, ``exit_code``/``exit_signal``), any order.
    :param min_restarts: restarts (starts after the first) that make a loop.
    :param window_s: seconds within which ``min_restarts`` restarts must fall.
    :param failures_only: count only restarts after a non-zero status or a signal.
    :return: :class:`RestartLoop` list, earliest first. Restarts less than ``window_s``
        apart, with no start beside a running instance between them, make one loop.
    """
    window_ns = int(window_s * 1e9)
    restarts, side_by_side, exes = _instances_and_restarts(process_records, failures_only)
    loops = []
    for key, pairs in restarts.items():
        # Restarts in time order, broken into runs by a gap over the window, by a start
        # beside a running instance (a burst, not one instance at a time), and by a "restart"
        # of or into such a crowd or long after the exit (a fresh start, not a respawn).
        marks: List[Tuple[int, Optional[tuple]]] = [
            (when, None) for when in side_by_side.get(key, ())
        ]
        for previous, restarted in pairs:
            fresh = restarted.start_ns - previous.end["ts_ns"] > window_ns
            crowd = previous.crowded or restarted.crowded
            marks.append((restarted.start_ns, None if fresh or crowd else (previous, restarted)))
        marks.sort(key=lambda mark: (mark[0], mark[1] is not None))
        clusters: list = []
        current: list = []
        for when, pair in marks:
            if pair is None or (current and when - current[-1][1].start_ns > window_ns):
                clusters.append(current)
                current = []
            if pair is not None:
                current.append(pair)
        clusters.append(current)
        for cluster in clusters:
            times = [restarted.start_ns for _previous, restarted in cluster]
            if cluster and _dense_enough(times, min_restarts, window_ns):
                loops.append(_loop(key, exes.get(key), cluster))
    loops.sort(key=lambda loop: loop.first_ns)
    return loops


def _loop(key, exe, cluster):
    first = cluster[0][0]
    instances = [first] + [restarted for _previous, restarted in cluster]
    ends = [instance.end for instance in instances if instance.end is not None]
    parents = Counter(
        instance.start.get("parent_name")
        for instance in instances
        if instance.start is not None and instance.start.get("parent_name")
    )
    return RestartLoop(
        program=exe or key,
        name=key,
        count=len(instances),
        pids=[instance.pid for instance in instances],
        first_ns=first.start_ns if first.start_ns is not None else first.end["ts_ns"],
        last_ns=instances[-1].start_ns,
        exit_codes=[
            end["exit_code"]
            for end in ends
            if not end.get("exit_signal") and end.get("exit_code") is not None
        ],
        exit_signals=[end["exit_signal"] for end in ends if end.get("exit_signal")],
        failures=sum(1 for end in ends if _failed(end)),
        ended=len(ends),
        parent=parents.most_common(1)[0][0] if parents else None,
        still_running=instances[-1].end is None,
    )


@dataclasses.dataclass
class TimelineEntry:
    """One line of a merged timeline: when (ns, monotonic), what kind, a short text, and
    the record or Event it came from."""

    ts_ns: int
    kind: str  # "process", "uevent" or "event"
    text: str
    item: object


def _process_text(record):
    who = record.get("name") or record.get("exe") or "?"
    text = f"{record.get('what')} {who} pid {record.get('pid')}"
    if record.get("what") == "exit":
        text += f": {exit_description(record)}"
    elif record.get("parent_name"):
        text += f" (started by {record['parent_name']})"
    return text


def _uevent_text(record):
    text = (
        f"{record.get('subsystem')} {record.get('action')} "
        f"{record.get('devname') or record.get('devpath')}"
    )
    return text + (" hotplug" if record.get("hotplug") else "")


def _event_text(event):
    text = f"{event.fn} by {event.comm or '?'} pid {event.pid}"
    if event.duration_ns is not None:
        text += f", {event.duration_ns / 1e6:.2f} ms"
    return text


def timeline(process_records, uevents, events=None):
    """Process records, uevents and (optionally) memtrace Events in time order, as
    :class:`TimelineEntry` objects; entries at the same nanosecond keep that argument order."""
    entries = [
        TimelineEntry(r["ts_ns"], "process", _process_text(r), r)
        for r in with_exit_names(process_records)
    ]
    entries += [TimelineEntry(u["ts_ns"], "uevent", _uevent_text(u), u) for u in uevents]
    entries += [TimelineEntry(e.ts_ns, "event", _event_text(e), e) for e in events or ()]
    entries.sort(key=lambda entry: entry.ts_ns)
    return entries

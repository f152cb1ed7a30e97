"""Process starts and exits, and DRM uevents, while tracing.

The seed's visible symptom was gdm restarting gnome-shell forever: each framebuffer move took
1.24 s on UC- memory, the greeter showed for a second and was started again, over and over.
:class:`ProcessWatcher` puts that symptom on the trace's timeline, from two netlink sockets
opened with pyroute2:

* the kernel's process connector (``NETLINK_CONNECTOR``, ``CN_IDX_PROC``): one message per
  fork, exec, exit, id change... It needs ``CONFIG_PROC_EVENTS`` and the initial user and PID
  namespaces (the kernel ignores requests from others: no answer in a container); older
  kernels also want CAP_NET_ADMIN (6.18 lets any user listen, as seen with uid 65534). Each
  message carries ``timestamp_ns`` from ``ktime_get_ns()`` (drivers/connector/cn_proc.c),
  i.e. CLOCK_MONOTONIC, the clock of memtrace's events (``bpf_ktime_get_ns()``, tracefs
  ``trace_clock`` mono), so records and events share one timeline. Only exec and exit of
  thread-group leaders become records; program details (name, executable, command line,
  parent) come from psutil as soon as the message is read, so a process that is already gone
  and reaped keeps only its pid.
* taskstats (``NETLINK_GENERIC`` family ``TASKSTATS``, a listener registered for every
  possible CPU): the kernel's accounting record of each exiting task, sent from ``do_exit()``
  *before* the connector's exit message and carrying the task's ``comm``. psutil can name a
  program only while its /proc entry exists; a program that ran briefly while memtrace was
  busy is often exited and reaped before memtrace looks (seen in a TCG guest: a ``sleep``
  killed after 0.3 s kept only its pid). Its exit still gets the kernel's name from
  taskstats (``CONFIG_TASKSTATS``; without it exits keep what psutil found).
* kobject uevents (``NETLINK_KOBJECT_UEVENT``, the kernel's multicast group): DRM ``add``,
  ``change`` (``HOTPLUG=1`` for connector changes), ``remove``... They carry no time, so their
  ``ts_ns`` is ``time.monotonic_ns()`` when memtrace read them.

Nothing is hidden: every message read is counted, and messages the kernel dropped (gaps in the
connector's per-CPU sequence numbers; ``ENOBUFS`` when a socket's buffer overflowed) are
counted as lost; a lost taskstats message costs at most one exit's name. A background thread
reads the sockets; ``stop()`` ends and joins it.
"""

import collections
import errno
import os
import select
import socket
import struct
import threading
import time
from typing import Callable, Dict, Optional

import psutil

from memtrace.errors import FeatureMissing

__all__ = [
    "ProcessWatchUnavailable",
    "ProcessWatcher",
    "decode_wait_status",
    "describe_process",
    "exit_names_from",
    "open_exit_stats",
    "process_record",
    "uevent_record",
]

# <linux/cn_proc.h>: the proc connector's message kinds and subscription operations.
PROC_EVENT_NONE = 0x0  # an acknowledgement of a subscription
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_EXIT = 0x80000000
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
CN_IDX_PROC = 1
CN_VAL_PROC = 1
# The offset of ``event_data.ack.err`` in an acknowledgement: nlmsghdr (16) + cn_msg (20) +
# proc_event's what, cpu and timestamp_ns (16).
_ACK_ERR_OFFSET = 52
_NO_CPU = 0xFFFFFFFF  # acknowledgements of kernels before per-CPU sequence numbers

# <linux/taskstats.h>: commands, attributes, and the offsets of the fields read from
# struct taskstats; fields are only ever appended, so these hold for every version.
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_NEW = 2
TASKSTATS_TYPE_PID = 1
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
_TS_COMM_OFFSET, _TS_COMM_LEN = 80, 32
_TS_PPID_OFFSET = 132
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_NLMSG_ERROR = 2
POSSIBLE_CPUS = "/sys/devices/system/cpu/possible"

UEVENT_KERNEL_GROUP = 1  # the kernel's own uevents (2 is udevd's re-broadcast)
UEVENT_SUBSYSTEMS = ("drm",)

# 4 MiB asked (the kernel doubles it): several thousand proc connector messages of backlog.
RECEIVE_BUFFER = 4 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
ACK_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 3.0
# Programs whose exec was seen and exit not yet: bounded, the oldest forgotten first.
_MAX_TRACKED = 65536

NEEDS_ROOT_HINT = "run memtrace as root (watching processes needs CAP_NET_ADMIN)"


class ProcessWatchUnavailable(FeatureMissing):
    """Process starts and exits (or DRM uevents) cannot be watched here; the trace goes on
    without them and says why."""


def decode_wait_status(status):
    """Split the kernel's ``task->exit_code`` (a wait(2) status) into
    ``(exit_code, exit_signal, core_dumped)``: the status passed to exit() and None, or None
    and the number of the signal that killed the process."""
    status = int(status) & 0xFFFF
    if status & 0x7F:
        return None, status & 0x7F, bool(status & 0x80)
    return (status >> 8) & 0xFF, None, False


def describe_process(pid):
    """What psutil can still tell about ``pid``: ``name``, ``exe``, ``cmdline``, ``ppid`` and
    ``parent_name``, each None when the process (or its parent) is gone or hides it."""
    details = {"name": None, "exe": None, "cmdline": None, "ppid": None, "parent_name": None}
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            for key in ("name", "exe", "cmdline", "ppid"):
                try:
                    value = getattr(proc, key)()
                except (psutil.Error, OSError):
                    continue
                details[key] = value if value not in ("", []) else None
    except (psutil.Error, OSError):
        return details
    if details["exe"] and details["exe"].endswith(" (deleted)"):
        # Replaced on disk (an upgrade) while running: still the same program.
        details["exe"] = details["exe"][: -len(" (deleted)")]
    if details["ppid"]:
        details["parent_name"] = _process_name(details["ppid"])
    return details


def _process_name(pid):
    try:
        return psutil.Process(pid).name() or None
    except (psutil.Error, OSError):
        return None


def process_record(msg, details=None):
    """The trace record for one proc connector message as pyroute2 parses it, or None.

    Only exec and exit of thread-group leaders (``pid == tgid``) give a record: a thread's
    exit is not a program's. ``details`` is :func:`describe_process`'s answer (or what was
    learned at exec time, for an exit); missing keys are written as null.
    """
    what = msg.get("what")
    if what not in (PROC_EVENT_EXEC, PROC_EVENT_EXIT):
        return None
    pid, tgid = msg.get("process_pid"), msg.get("process_tgid")
    if pid != tgid:
        return None
    details = details or {}
    record = {
        "type": "process",
        "what": "exec" if what == PROC_EVENT_EXEC else "exit",
        "ts_ns": int(msg["timestamp_ns"]),
        "pid": pid,
        "tgid": tgid,
        "ppid": details.get("ppid"),
        "parent_name": details.get("parent_name"),
        "name": details.get("name"),
        "exe": details.get("exe"),
        "cmdline": details.get("cmdline"),
    }
    if what == PROC_EVENT_EXIT:
        # The kernel's own parent beats psutil's (the exit message carries it).
        if msg.get("parent_tgid"):
            record["ppid"] = msg["parent_tgid"]
        code, sig, core = decode_wait_status(msg.get("exit_code", 0))
        record.update(
            {
                "exit_code": code,
                "exit_signal": sig,
                "core_dumped": core,
                "wait_status": int(msg.get("exit_code", 0)),
            }
        )
    return record


_UEVENT_NAMED = {
    "ACTION": "action",
    "SUBSYSTEM": "subsystem",
    "DEVPATH": "devpath",
    "DEVNAME": "devname",
    "DEVTYPE": "devtype",
}


def uevent_record(msg, ts_ns, subsystems=UEVENT_SUBSYSTEMS):
    """The trace record for one uevent as pyroute2 parses it (a dict of the uevent's
    ``KEY=value`` pairs plus ``header``), or None when its subsystem is not watched."""
    if msg.get("SUBSYSTEM") not in subsystems:
        return None
    record = {"type": "uevent", "ts_ns": int(ts_ns)}
    for key, name in _UEVENT_NAMED.items():
        record[name] = msg.get(key)
    record["hotplug"] = msg.get("HOTPLUG") == "1"
    seqnum = msg.get("SEQNUM")
    record["seqnum"] = int(seqnum) if isinstance(seqnum, str) and seqnum.isdigit() else None
    record["properties"] = {
        key: value
        for key, value in msg.items()
        if isinstance(key, str)
        and key.isupper()
        and isinstance(value, str)
        and key not in _UEVENT_NAMED
        and key not in ("HOTPLUG", "SEQNUM")
    }
    return record


class _SequenceGaps:
    """Messages the proc connector sent but this socket never got.

    The kernel numbers its messages per CPU (``cn_msg.seq``, ``proc_event.cpu``) and sends each
    one to every listener in order, so a jump in one CPU's numbers is that many messages lost.
    A loss after a CPU's last message cannot be seen; ENOBUFS counts those.
    """

    def __init__(self):
        self.last: Dict[int, int] = {}
        self.lost = 0

    def feed(self, cpu, seq):
        if cpu is None or seq is None or cpu == _NO_CPU:
            return
        previous = self.last.get(cpu)
        self.last[cpu] = seq
        if previous is not None:
            gap = (seq - previous - 1) & 0xFFFFFFFF
            if gap < 0x80000000:  # a huge "gap" is a counter reset, not a loss
                self.lost += gap


def _refused(what, doing, err):
    """The ProcessWatchUnavailable for an OSError while ``doing`` (a verb)."""
    if err.errno in (errno.EPERM, errno.EACCES):
        return ProcessWatchUnavailable(f"{what}: not allowed to {doing}", NEEDS_ROOT_HINT)
    return ProcessWatchUnavailable(f"{what}: cannot {doing}: {os.strerror(err.errno)}")


def _netlink_socket(factory, group, what, config):
    """Open a pyroute2 netlink socket and bind it to ``group``; return a plain non-blocking
    socket on the same kernel socket, owned by the caller.

    pyroute2 0.9's ``bind()`` tries ports 20-199 and turns any failure (EPERM included) into
    ``KeyError('no free address available')``, and its sockets run an asyncio loop bound to the
    opening thread; memtrace binds a duplicate itself, with the kernel choosing the port, so
    errors keep their errno and the reading thread owns its socket.
    """
    try:
        opened = factory()
    except OSError as err:
        if err.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
            raise ProcessWatchUnavailable(
                f"{what}: this kernel has no netlink family for it (built without {config})",
                "the trace goes on without it",
            ) from None
        raise ProcessWatchUnavailable(
            f"{what}: cannot open a netlink socket: {os.strerror(err.errno)}"
        ) from None
    except Exception as err:  # pyroute2's own failures must not end the trace
        raise ProcessWatchUnavailable(
            f"{what}: pyroute2 could not open the socket: {type(err).__name__}: {err}"
        ) from None
    try:
        sock = socket.socket(fileno=os.dup(opened.fileno()))
    finally:
        opened.close()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            pass  # not root: rmem_max caps SO_RCVBUF instead
        try:
            sock.bind((0, group))
        except OSError as err:
            raise _refused(what, "listen", err) from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _control_message(action, port, ack):
    from pyroute2.netlink import NLMSG_DONE
    from pyroute2.netlink.connector.cn_proc import proc_event_control

    msg = proc_event_control()
    msg["header"]["type"] = NLMSG_DONE
    msg["header"]["flags"] = 0
    msg["header"]["sequence_number"] = ack
    msg["header"]["pid"] = port
    msg.update(
        {
            "idx": CN_IDX_PROC,
            "val": CN_VAL_PROC,
            "seq": ack,
            "ack": ack,
            "len": 4,
            "flags": 0,
            "action": action,
        }
    )
    msg.encode()
    return msg.data


def _read_until_answer(sock, is_answer, what, timeout, hint=None):
    """Read ``sock`` until ``is_answer(datagram)``; return that datagram and those that came
    before it (real events, to be handled like any other; None for an overrun). Raise
    :class:`ProcessWatchUnavailable` after ``timeout`` seconds without the answer."""
    backlog = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProcessWatchUnavailable(
                f"{what}: the kernel did not answer within {timeout:g} s", hint
            )
        readable, _, _ = select.select([sock], [], [], remaining)
        if not readable:
            continue
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError as err:
            if err.errno == errno.ENOBUFS:
                backlog.append(None)  # an overrun while waiting: counted later
                continue
            raise ProcessWatchUnavailable(f"{what}: {os.strerror(err.errno)}") from None
        if is_answer(data):
            return data, backlog
        backlog.append(data)


def _subscribe(sock, ack, timeout=ACK_TIMEOUT_S):
    """Send PROC_CN_MCAST_LISTEN and wait for the kernel's acknowledgement; return the
    datagrams that came before it (real events, to be handled like any other)."""
    what = "process connector"
    try:
        sock.send(_control_message(PROC_CN_MCAST_LISTEN, sock.getsockname()[0], ack))
    except OSError as err:
        raise _refused(what, "subscribe", err) from None

    def is_answer(data):
        # cn_msg.ack (offset 28) is ours + 1, proc_event.what (36) is NONE.
        return (
            len(data) >= _ACK_ERR_OFFSET + 4
            and struct.unpack_from("=I", data, 36)[0] == PROC_EVENT_NONE
            and struct.unpack_from("=I", data, 28)[0] == (ack + 1) & 0xFFFFFFFF
        )

    answer, backlog = _read_until_answer(
        sock,
        is_answer,
        what,
        timeout,
        "it answers only in the initial user and PID namespaces (not in a container), "
        "on a kernel with CONFIG_PROC_EVENTS",
    )
    (code,) = struct.unpack_from("=I", answer, _ACK_ERR_OFFSET)
    if code in (errno.EPERM, errno.EACCES):
        raise ProcessWatchUnavailable(
            f"{what}: the kernel refused the subscription", NEEDS_ROOT_HINT
        )
    if code:
        raise ProcessWatchUnavailable(
            f"{what}: the kernel refused the subscription: {os.strerror(code)}"
        )
    return backlog + [answer]  # the answer is counted like every other message


def open_proc_connector(ack=None):
    """A subscribed proc connector socket and the datagrams read while subscribing; raise
    :class:`ProcessWatchUnavailable` saying why not."""
    from pyroute2 import ProcEventSocket

    sock = _netlink_socket(ProcEventSocket, CN_IDX_PROC, "process connector", "CONFIG_CONNECTOR")
    ack = ack if ack is not None else (os.getpid() << 8 | 0x5A) & 0x7FFFFFFF
    try:
        return sock, _subscribe(sock, ack)
    except BaseException:
        sock.close()
        raise


def open_uevent_socket():
    """A socket on the kernel's uevent multicast group; raise :class:`ProcessWatchUnavailable`
    saying why not."""
    from pyroute2 import UeventSocket

    return _netlink_socket(UeventSocket, UEVENT_KERNEL_GROUP, "uevents", "CONFIG_NET")


def _attributes(data, start, end):
    """(type, value start, value end) of each netlink attribute in ``data[start:end]``."""
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4 or start + length > end:
            return
        yield kind & _NLA_TYPE_MASK, start + 4, start + length
        start += (length + 3) & ~3


def exit_names_from(data):
    """``[(pid, comm, ppid)]``: the exiting tasks in one taskstats datagram (a thread's pid is
    its thread id). Messages that are not exit records (acknowledgements, errors) give
    nothing."""
    found = []
    offset = 0
    while offset + 20 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16 or offset + length > len(data):
            break
        end = offset + length
        if kind != _NLMSG_ERROR and data[offset + 16] == TASKSTATS_CMD_NEW:
            for attr, start, stop in _attributes(data, offset + 20, end):
                if attr != TASKSTATS_TYPE_AGGR_PID:
                    continue
                pid = stats = None
                for inner, value, value_end in _attributes(data, start, stop):
                    if inner == TASKSTATS_TYPE_PID and value_end - value >= 4:
                        (pid,) = struct.unpack_from("=I", data, value)
                    elif inner == TASKSTATS_TYPE_STATS and value_end - value >= _TS_PPID_OFFSET + 4:
                        stats = value
                if pid is None or stats is None:
                    continue
                comm = data[stats + _TS_COMM_OFFSET : stats + _TS_COMM_OFFSET + _TS_COMM_LEN]
                comm = comm.split(b"\0", 1)[0].decode("utf-8", "replace")
                (ppid,) = struct.unpack_from("=I", data, stats + _TS_PPID_OFFSET)
                found.append((pid, comm or None, ppid or None))
        offset += (length + 3) & ~3
    return found


def _taskstats_request(family, attribute, cpus, port, seq):
    from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
    from pyroute2.netlink.taskstats import tcmd

    msg = tcmd()
    msg["cmd"] = TASKSTATS_CMD_GET
    msg["version"] = 1
    msg["attrs"] = [[attribute, cpus]]
    msg["header"]["type"] = family
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = port
    msg.encode()
    return msg.data


def _possible_cpus():
    try:
        with open(POSSIBLE_CPUS, encoding="ascii") as src:
            return src.read().strip()
    except OSError:
        return f"0-{max(os.cpu_count() or 1, 1) - 1}"


class ExitStatsListener:
    """A taskstats socket registered for the exits of every possible CPU; ``close()``
    deregisters (the kernel also drops a listener whose socket is gone)."""

    WHAT = "exit names (taskstats)"

    def __init__(self, sock, family, cpus):
        self.sock, self.family, self.cpus = sock, family, cpus

    def fileno(self):
        """The socket's descriptor, for select()."""
        return self.sock.fileno()

    def recv(self, size):
        """One datagram, as ``socket.recv``."""
        return self.sock.recv(size)

    def close(self):
        """Deregister and close; safe to call twice."""
        if self.sock is None:
            return
        try:
            self.sock.send(
                _taskstats_request(
                    self.family,
                    "TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK",
                    self.cpus,
                    self.sock.getsockname()[0],
                    2,
                )
            )
        except OSError:
            pass
        self.sock.close()
        self.sock = None


def open_exit_stats(timeout=ACK_TIMEOUT_S):
    """``(listener, datagrams read while registering)``: an :class:`ExitStatsListener`, or
    :class:`ProcessWatchUnavailable` saying why not."""
    from pyroute2 import TaskStats
    from pyroute2.netlink.exceptions import NetlinkError

    what = ExitStatsListener.WHAT
    try:
        resolver = TaskStats()
        try:
            resolver.bind()
            family = resolver.prid
        finally:
            resolver.close()
    except NetlinkError as err:
        if err.code == errno.ENOENT:
            raise ProcessWatchUnavailable(
                f"{what}: this kernel has no taskstats family (built without CONFIG_TASKSTATS)",
                "exits keep the names seen at exec",
            ) from None
        raise ProcessWatchUnavailable(f"{what}: {os.strerror(err.code)}") from None
    except OSError as err:
        raise ProcessWatchUnavailable(
            f"{what}: cannot open a netlink socket: {os.strerror(err.errno)}"
        ) from None
    except Exception as err:  # pyroute2's own failures must not end the trace
        raise ProcessWatchUnavailable(
            f"{what}: pyroute2 could not resolve the family: {type(err).__name__}: {err}"
        ) from None
    sock = _netlink_socket(TaskStats, 0, what, "CONFIG_TASKSTATS")
    cpus = _possible_cpus()
    try:
        sock.send(
            _taskstats_request(
                family, "TASKSTATS_CMD_ATTR_REGISTER_CPUMASK", cpus, sock.getsockname()[0], 1
            )
        )
        answer, backlog = _read_until_answer(
            sock,
            lambda data: len(data) >= 20 and struct.unpack_from("=H", data, 4)[0] == _NLMSG_ERROR,
            what,
            timeout,
        )
        (code,) = struct.unpack_from("=i", answer, 16)
        if code in (-errno.EPERM, -errno.EACCES):
            raise ProcessWatchUnavailable(
                f"{what}: the kernel refused the listener", NEEDS_ROOT_HINT
            )
        if code:
            raise ProcessWatchUnavailable(
                f"{what}: the kernel refused the listener for CPUs {cpus}: {os.strerror(-code)}"
            )
        return ExitStatsListener(sock, family, cpus), backlog
    except OSError as err:
        sock.close()
        raise _refused(what, "register", err) from None
    except BaseException:
        sock.close()
        raise


class _Source:
    """One socket's counts, as the footer reports them."""

    def __init__(self):
        self.status = "ok"
        self.reason: Optional[str] = None
        self.read = 0  # messages read, of every kind
        self.records = 0  # records made from them
        self.overruns = 0  # ENOBUFS: the kernel dropped messages (at least one each)
        self.gaps = _SequenceGaps()

    @property
    def lost(self):
        return max(self.gaps.lost, self.overruns)

    def as_dict(self):
        return {
            "status": self.status,
            "reason": self.reason,
            "read": self.read,
            "records": self.records,
            "lost": self.lost,
            "overruns": self.overruns,
        }


class ProcessWatcher:
    """Watch exec and exit of processes, and DRM uevents, from a background thread.

    ``on_record(record)`` receives each record (a JSON-ready dict, docs/trace-format.md) in the
    watcher's thread; without it records are kept in ``records``. ``start()`` raises
    :class:`ProcessWatchUnavailable` when the process connector cannot be used (uevents or
    taskstats that cannot be used are only noted in ``stats()``); ``stop()`` reads what is
    left, ends the subscriptions, closes the sockets and joins the thread. Also a context
    manager.
    """

    def __init__(
        self,
        on_record: Optional[Callable] = None,
        uevents=True,
        lookup=describe_process,
        clock=time.monotonic_ns,
        open_proc=None,
        open_uevents=None,
        exit_names=True,
        open_exit_stats=None,
    ):
        self.records: list = []
        # Tests give other sockets; by default the module's openers, looked up at start().
        self._open_proc = open_proc
        self._open_uevents = open_uevents
        self._open_exit_stats = open_exit_stats
        self._want_exit_names = exit_names
        self._on_record = on_record or self.records.append
        self._want_uevents = uevents
        self._lookup = lookup
        self._clock = clock
        self.proc = _Source()
        self.uevent = _Source()
        self.exit_stats = _Source()
        self.errors = 0
        self.first_error: Optional[str] = None
        self.stuck = False
        self._started = False
        self._proc_sock = self._uevent_sock = self._exit_sock = None
        self._backlog: list = []
        self._exit_backlog: list = []
        # pid (thread id) -> the kernel's comm at exit, until the connector's exit comes.
        self._exit_names: "collections.OrderedDict[int, str]" = collections.OrderedDict()
        self._known: "collections.OrderedDict[int, dict]" = collections.OrderedDict()
        self._parents: "collections.OrderedDict[int, int]" = collections.OrderedDict()
        self._thread = None
        self._stopping = threading.Event()
        self._wake_r = self._wake_w = None
        self._ack = None
        self._proc_marshal = self._uevent_marshal = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self):
        """Open and subscribe, then start reading; ProcessWatchUnavailable says why not."""
        from pyroute2.netlink.connector.cn_proc import ProcEventMarshal
        from pyroute2.netlink.uevent import MarshalUevent

        self._proc_marshal, self._uevent_marshal = ProcEventMarshal(), MarshalUevent()
        try:
            self._ack = (os.getpid() << 8 | 0x5A) & 0x7FFFFFFF
            try:
                self._proc_sock, self._backlog = (self._open_proc or open_proc_connector)(self._ack)
            except ProcessWatchUnavailable as err:
                self.proc.status, self.proc.reason = "unavailable", err.one_line()
                raise
            if self._want_uevents:
                try:
                    self._uevent_sock = (self._open_uevents or open_uevent_socket)()
                except ProcessWatchUnavailable as err:
                    self.uevent.status, self.uevent.reason = "unavailable", err.one_line()
            else:
                self.uevent.status, self.uevent.reason = "unavailable", "not asked for"
            if self._want_exit_names:
                try:
                    self._exit_sock, self._exit_backlog = (
                        self._open_exit_stats or open_exit_stats
                    )()
                except ProcessWatchUnavailable as err:
                    self.exit_stats.status, self.exit_stats.reason = "unavailable", err.one_line()
            else:
                self.exit_stats.status, self.exit_stats.reason = "unavailable", "not asked for"
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(
                target=self._run, name="memtrace-process-watch", daemon=True
            )
            self._thread.start()
            self._started = True
        except BaseException:
            # Ctrl-C or SIGTERM while subscribing lands here too: leave nothing open.
            if self._thread is None:
                self._close_sockets()
                self._close_pipe()
            raise
        return self

    def stop(self, timeout=STOP_TIMEOUT_S):
        """Read what is left, unsubscribe, close and join. Safe to call more than once, and
        when ``start()`` failed."""
        thread = self._thread
        if thread is None:
            self._close_sockets()
            self._close_pipe()
            return
        self._stopping.set()
        try:
            os.write(self._wake_w, b"x")
        except (OSError, TypeError):
            pass
        thread.join(timeout)
        if thread.is_alive():
            # Stuck in a /proc read of a process that hangs in the kernel: its sockets stay
            # with it (closing them under it could hand their numbers to other files).
            self.stuck = True
            return
        self._thread = None
        self._close_pipe()

    def __enter__(self):
        return self.start()

    def __exit__(self, *_exc):
        self.stop()

    def mark_unavailable(self, reason):
        """Record why watching could not start when the caller caught something start() did
        not expect (the footer says so)."""
        self.proc.status, self.proc.reason = "unavailable", reason

    def stats(self):
        """The footer's ``process_watch`` object: status, reason, counts, uevents' counts."""
        if not self._started and self.proc.status == "ok":
            self.proc.status, self.proc.reason = "unavailable", "tracing ended before it started"
            self.uevent.status, self.uevent.reason = "unavailable", self.proc.reason
        if not self._started and self.exit_stats.status == "ok":
            self.exit_stats.status, self.exit_stats.reason = "unavailable", self.proc.reason
        stats = self.proc.as_dict()
        stats["uevents"] = self.uevent.as_dict()
        stats["exit_names"] = self.exit_stats.as_dict()
        if self.errors:
            stats["errors"] = self.errors
            stats["first_error"] = self.first_error
        if self.stuck:
            stats["stuck"] = True
        return stats

    # -- the reading thread -----------------------------------------------------------------

    def _run(self):
        try:
            # What came while subscribing; exit stats first, as in the loop below.
            self._replay(self._exit_backlog, self.exit_stats, self._handle_exit_stats)
            self._replay(self._backlog, self.proc, self._handle_proc)
            self._exit_backlog, self._backlog = [], []
            while not self._stopping.is_set():
                # Exit stats first: a connector exit then finds its task's name waiting.
                socks = [
                    s
                    for s in (self._exit_sock, self._proc_sock, self._uevent_sock)
                    if s is not None
                ]
                readable, _, _ = select.select(socks + [self._wake_r], [], [], 1.0)
                for sock in readable:
                    if sock is not self._wake_r:
                        self._drain(sock)
            # Stopping: what the kernel already queued still belongs to the trace.
            for sock in (self._exit_sock, self._proc_sock, self._uevent_sock):
                if sock is not None:
                    self._drain(sock)
        except Exception as err:  # a bug must not kill the watch silently
            self._note_error(err)
        finally:
            self._unsubscribe()
            self._close_sockets()

    @staticmethod
    def _replay(backlog, source, handle):
        for data in backlog:
            if data is None:
                source.overruns += 1
            else:
                handle(data)

    def _drain(self, sock, limit=10000):
        if sock is self._proc_sock:
            source, handle = self.proc, self._handle_proc
        elif sock is self._exit_sock:
            source, handle = self.exit_stats, self._handle_exit_stats
        else:
            source, handle = self.uevent, self._handle_uevent
        for _ in range(limit):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    source.overruns += 1
                    continue
                raise
            handle(data)

    def _handle_proc(self, data):
        for msg in self._proc_marshal.parse(data):
            self.proc.read += 1
            if msg.get("what") is None:
                continue
            self.proc.gaps.feed(msg.get("cpu"), msg.get("seq", 0))
            try:
                record = self._proc_to_record(msg)
            except Exception as err:
                self._note_error(err)
                continue
            if record is not None:
                self.proc.records += 1
                self._deliver(record)

    def _proc_to_record(self, msg):
        what = msg["what"]
        if what == PROC_EVENT_FORK:
            # A new process (not a thread): remember its parent for an exec psutil misses.
            if msg.get("child_pid") == msg.get("child_tgid"):
                _remember(self._parents, msg["child_tgid"], msg.get("parent_tgid"))
            return None
        pid = msg.get("process_pid")
        if pid != msg.get("process_tgid"):
            return None
        if what == PROC_EVENT_EXEC:
            details = dict(self._lookup(pid))
            if not details.get("ppid") and self._parents.get(pid):
                details["ppid"] = self._parents[pid]
                details["parent_name"] = details.get("parent_name") or _process_name(
                    details["ppid"]
                )
            _remember(self._known, pid, details)
            return process_record(msg, details)
        if what == PROC_EVENT_EXIT:
            self._parents.pop(pid, None)
            details = self._known.pop(pid, None)
            if details is None:
                # Started before the watch: whatever /proc still shows of the exiting process.
                details = self._lookup(pid)
            kernel_name = self._exit_name(pid)
            if kernel_name and not details.get("name"):
                # Gone before psutil looked: the kernel's own name, sent just before.
                details = dict(details, name=kernel_name)
                self.exit_stats.records += 1
            parent = msg.get("parent_tgid")
            if parent and parent != details.get("ppid"):
                details = dict(details, ppid=parent, parent_name=_process_name(parent))
            return process_record(msg, details)
        return None

    def _handle_exit_stats(self, data):
        for pid, comm, _ppid in exit_names_from(data):
            self.exit_stats.read += 1
            if comm:
                _remember(self._exit_names, pid, comm)

    def _exit_name(self, pid):
        """The kernel's name for ``pid`` from its exit stats, which taskstats sends before the
        connector's exit: read whatever is queued first."""
        if self._exit_sock is not None and pid not in self._exit_names:
            self._drain(self._exit_sock)
        return self._exit_names.pop(pid, None)

    def _handle_uevent(self, data):
        now = self._clock()
        for msg in self._uevent_marshal.parse(data):
            self.uevent.read += 1
            try:
                record = uevent_record(msg, now)
            except Exception as err:
                self._note_error(err)
                continue
            if record is not None:
                self.uevent.records += 1
                self._deliver(record)

    def _deliver(self, record):
        try:
            self._on_record(record)
        except Exception as err:
            self._note_error(err)

    def _note_error(self, err):
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(err).__name__}: {err}"

    def _unsubscribe(self):
        # Kernels that count listeners keep sending events until told to stop.
        if self._proc_sock is not None and self._ack is not None:
            try:
                self._proc_sock.send(
                    _control_message(
                        PROC_CN_MCAST_IGNORE, self._proc_sock.getsockname()[0], self._ack + 2
                    )
                )
            except OSError:
                pass

    def _close_sockets(self):
        for name in ("_proc_sock", "_uevent_sock", "_exit_sock"):
            sock = getattr(self, name)
            if sock is not None:
                sock.close()
                setattr(self, name, None)

    def _close_pipe(self):
        for name in ("_wake_r", "_wake_w"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


def _remember(table, key, value):
    table[key] = value
    table.move_to_end(key)
    while len(table) > _MAX_TRACKED:
        table.popitem(last=False)

"""``--dump-program``: print what a tracing command would attach, and attach nothing.

bcc's tools call this ``--ebpf``. The plan is resolved as for a real run (kallsyms, module
files, BTF offsets: probes/plan.py), then handed to the chosen backend's own generators: the
BPF C program and its ``-D`` flags (``bcc_backend.program_text`` / ``program_cflags``) or the
``kprobe_events`` lines (``TracefsBackend.program``). The output is usable as it stands:

* bcc: a C file whose first comment holds the probe table and a ``cflags:`` line; give both
  to ``bcc.BPF(text=..., cflags=...)``.
* tracefs: ``kprobe_events`` lines, with ``#`` comments the kernel ignores; append them
  (``>>``, never ``>``: truncating kprobe_events deletes every tool's kprobes).

Nothing is mounted, written or loaded, and neither root nor kprobes are needed: only the
kernel's symbols. On a kernel that could not attach the probes the dump says why, and still
shows what the backend would attach.
"""

import os
import sys

from memtrace import escape
from memtrace.errors import FeatureMissing
from memtrace.probes import plan as plans
from memtrace.probes.features import OK, running_kernel_features
from memtrace.probes.session import btf_offset_resolver, choose_backend

POSSIBLE_CPUS = "/sys/devices/system/cpu/possible"


def _discard(_event):
    """The event sink of a backend that is only asked for its program."""


def resolve_plan(requests, features, required=()):
    """The Plan a `TraceSession` would build for ``requests`` on the kernel ``features``
    describes, without its root and backend checks (a dump attaches nothing)."""
    source = features.symbol_source
    if source is None:
        why = features.kallsyms
        raise FeatureMissing(
            f"--dump-program resolves the probes from the kernel's symbols, "
            f"and they cannot be read: {getattr(why, 'message', why)}",
            getattr(why, "hint", None) or "read /proc/kallsyms as root",
        )
    requests = plans.expand_requests(requests, source.kallsyms, source.module_files)
    plan = plans.build_plan(
        requests, source, btf_offset_resolver(features), strict=False, required=required
    )
    if not plan.probes:
        reasons = "; ".join(f"{name}: {why}" for name, why in plan.skipped[:3])
        raise FeatureMissing(f"nothing to probe on this kernel ({reasons})")
    return plan


def pick_backend(features, wanted="auto"):
    """``(backend, reason, why_not)``: the backend a run would use and why; when this kernel
    (or this user) could not attach anything, the backend the dump shows instead and, in
    ``why_not``, why a run would fail here."""
    try:
        name, reason = choose_backend(features, wanted)
        return name, reason, None
    except FeatureMissing as err:
        why_not = err.one_line()
    if wanted != "auto":
        return wanted, "chosen with --backend", why_not
    if features.bcc_check.status == OK:
        return "bcc", "auto would choose it: bcc imports and kernel headers are present", why_not
    return ("tracefs", f"auto would choose it: bcc unusable ({features.bcc_check.detail})", why_not)


def possible_cpus(path=POSSIBLE_CPUS):
    """How many CPUs the kernel may bring up (bcc sizes per-CPU arrays by it), as bcc's
    ``utils.get_possible_cpus`` counts them; ``os.cpu_count()`` when the file is unreadable."""
    try:
        from bcc.utils import get_possible_cpus

        return len(get_possible_cpus())
    except Exception:  # bcc missing or broken: count them the same way
        pass
    try:
        with open(path, encoding="ascii") as stream:
            text = stream.read().strip()
    except OSError:
        return max(os.cpu_count() or 1, 1)
    count = 0
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return max(count, 1)


def uses_ringbuf(features):
    """Whether the bcc backend sends events through a BPF ring buffer here (its ``buffer``
    option "auto"): BccBackend._compile's test, bpf_ringbuf_output in kallsyms (Linux 5.8)."""
    table = features.kallsyms
    return bool(getattr(table, "has_function", None)) and table.has_function("bpf_ringbuf_output")


# -- the probe table ----------------------------------------------------------------------


def _state(probe):
    if probe.module is None:
        return "vmlinux"
    if probe.resolution.loaded:
        return f"[{probe.module}] loaded"
    return f"[{probe.module}] when it loads"


def probe_table(plan, aggregated=frozenset(), events=None):
    """The resolved probes as text lines: one row per probe (what was asked for, the symbol
    probed and how it was chosen, where it lives, what is fetched, where struct offsets came
    from), then what could not be probed, then why a name was substituted."""
    headers = ["id", "requested", "probed", "how", "where", "fetches", "offsets"]
    if events is not None:
        headers.append("event")
    rows = []
    for index, probe in enumerate(plan.probes):
        fetches = ",".join(f.name for f in probe.spec.fetch) or "-"
        if probe.spec.stack:
            fetches += " +stack"
        offsets = probe.offsets_from
        if probe.probe_name in aggregated:
            offsets += " (summed in kernel)"
        row = [
            str(index),
            probe.fn,
            probe.probe_name,
            probe.resolution.how,
            _state(probe),
            fetches,
            offsets,
        ]
        if events is not None:
            row.append(events[index])
        rows.append(row)
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [headers] + rows
    ]
    if plan.skipped:
        lines.append("not probed on this kernel:")
        lines.extend(f"  {name}: {why.removeprefix(name + ': ')}" for name, why in plan.skipped)
    notes = []
    for probe in plan.probes:
        explanation = probe.resolution.explanation
        note = f"  {probe.fn} -> {probe.probe_name}: {explanation}" if explanation else None
        if note and note not in notes:
            notes.append(note)
    if notes:
        lines.append("why these symbols:")
        lines.extend(notes)
    pending = plan.modules_pending()
    if pending:
        lines.append(f"modules not loaded yet, probed when they load: {', '.join(pending)}")
    return lines


# -- the two outputs ----------------------------------------------------------------------


def _header(command, features, backend, reason, why_not, workload, what):
    lines = [
        f"memtrace {command} --dump-program: {what}; nothing was attached.",
        f"kernel {features.release}; backend {backend} ({reason})",
    ]
    if why_not:
        lines.append(f"a run could not attach them here: {why_not}")
    if workload:
        lines.append(f"not run: {' '.join(workload)}")
    return lines


def bcc_dump(plan, features, aggregated=frozenset(), head=()):
    """The bcc backend's program for ``plan`` as one C file: a leading comment with ``head``,
    the ``cflags:`` line and the probe table, then the program ``BccBackend`` compiles."""
    from memtrace.probes import bcc_backend

    backend = bcc_backend.BccBackend(plan, _discard, {"aggregate": frozenset(aggregated)})
    cflags = bcc_backend.program_cflags(
        plan, possible_cpus(), uses_ringbuf(features), backend.aggregate
    )
    text = bcc_backend.program_text(plan, backend.aggregated)
    comment = (
        list(head)
        + [
            f"cflags: {' '.join(cflags)}",
            "(compile: bcc.BPF(text=<this file>, cflags=<the flags above>); mt_entry_<id> is "
            "attached as a kprobe and mt_return_<id> as a kretprobe on the probed symbol)",
            "",
        ]
        + probe_table(
            plan,
            backend.aggregated,
            [f"mt_entry_{i}/mt_return_{i}" for i in range(len(plan.probes))],
        )
    )
    body = "\n".join(f" * {line}".rstrip() for line in comment).replace("*/", "* /")
    return f"/*\n{body}\n */\n{text}"


def tracefs_dump(plan, head=()):
    """The tracefs backend's ``kprobe_events`` lines for ``plan``, with ``head`` and the
    probe table as ``#`` comments; each return probe that reads an argument (Linux 6.9+) is
    followed by the plain one the backend falls back to on older kernels, commented out."""
    from memtrace.probes.tracefs_backend import TracefsBackend

    backend = TracefsBackend(plan, _discard, {})
    lines = backend.program()
    out = [
        f"# {line}".rstrip()
        for line in list(head)
        + [
            f"group {backend.group}: append these lines to kprobe_events (>>, never >); a run "
            f"enables them only in instances/{backend.instance}, and removes them with "
            f"-:{backend.group}/EVENT",
            "",
        ]
        + probe_table(plan, events=[c.event for c in backend.compiled])
    ]
    for index, compiled in enumerate(backend.compiled):
        out.append("")
        out.extend(lines[2 * index : 2 * index + 2])
        if compiled.ret_plain is not None:
            out.append(f"# before Linux 6.9 (no $argN at return): {compiled.ret_plain}")
        if compiled.planned.spec.stack:
            out.append(
                f"# then: echo stacktrace > instances/{backend.instance}/events/"
                f"{backend.group}/{compiled.event}/trigger"
            )
    return "\n".join(out) + "\n"


def dump_program(
    requests,
    backend="auto",
    command="record",
    required=(),
    aggregate=None,
    workload=None,
    features=None,
    stream=None,
):
    """Print what `memtrace COMMAND` would attach for ``requests`` with ``backend`` on the
    running kernel (or ``features``), to ``stream`` (stdout); attach nothing; return 0.

    ``aggregate(plan)`` names the probes whose calls the bcc backend would sum in the kernel
    (`memtrace latency`); ``required`` are the names that must resolve (as for a run).
    """
    features = features or running_kernel_features(allow_mount=False)
    stream = stream or sys.stdout
    plan = resolve_plan(requests, features, required)
    name, reason, why_not = pick_backend(features, backend)
    if name == "bcc":
        aggregated = frozenset(aggregate(plan)) if aggregate else frozenset()
        head = _header(
            command,
            features,
            name,
            reason,
            why_not,
            workload,
            f"the BPF program the bcc backend would compile and the "
            f"{len(plan.probes)} functions it would probe",
        )
        stream.write(bcc_dump(plan, features, aggregated, head))
    else:
        head = _header(
            command,
            features,
            name,
            reason,
            why_not,
            workload,
            f"the kprobe_events lines the tracefs backend would register for "
            f"{len(plan.probes)} functions",
        )
        stream.write(tracefs_dump(plan, head))
    stream.flush()
    if why_not:
        print(
            escape.text(
                f"memtrace {command}: note: printed what {name} would attach; a run could "
                f"not attach it here: {why_not}"
            ),
            file=sys.stderr,
        )
    return 0

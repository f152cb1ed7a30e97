"""The probe plan: which symbols to probe for a run, with their specs and resolved offsets.

Built once from the target table (targets.py), the spec table (probe_specs.py) and BTF,
then handed to a backend. A backend only compiles a plan; it decides nothing about names.
"""

import dataclasses
import fnmatch
from typing import Dict, List, Optional, Tuple

from memtrace.errors import MemtraceError, NotTraceable
from memtrace.probes import targets
from memtrace.probes.probe_specs import FALLBACK_OFFSETS, ProbeSpec, spec_for


@dataclasses.dataclass
class PlannedProbe:
    """One symbol to probe. ``fn`` is the name the user or the default set asked for."""

    fn: str
    resolution: targets.Resolution
    spec: ProbeSpec
    # (struct, path) -> byte offset, for fetches that dereference a struct field
    offsets: Dict[Tuple[str, str], int] = dataclasses.field(default_factory=dict)
    # fetch name -> unit of the member found ("size" bytes / "num_pages")
    field_units: Dict[str, str] = dataclasses.field(default_factory=dict)
    offsets_from: str = "none"  # "btf" or "fallback"

    @property
    def symbol(self):
        """The kernel symbol probed."""
        return self.resolution.symbol

    @property
    def module(self):
        """The module of the symbol, None for vmlinux."""
        return self.resolution.module

    @property
    def probe_name(self):
        """``MOD:SYM`` for module code, else ``SYM``."""
        return self.resolution.probe_name

    def describe(self):
        """A JSON-ready description for trace headers and outputs."""
        return {
            "requested": self.fn,
            "probed": self.probe_name,
            "how": self.resolution.how,
            "loaded": self.resolution.loaded,
            "explanation": self.resolution.explanation,
            "offsets_from": self.offsets_from,
        }


@dataclasses.dataclass
class Plan:
    """Everything a backend attaches, and what could not be planned (with why)."""

    probes: List[PlannedProbe]
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    def modules_pending(self):
        """Modules some probe needs that are not loaded yet."""
        return sorted({p.module for p in self.probes if p.module and not p.resolution.loaded})


# The default set for `memtrace record` / `conflicts`: every target in the table.
DEFAULT_TARGETS = tuple(t.name for t in targets.TARGETS)


def expand_requests(requests, kallsyms, module_files=None):
    """Expand globs in ``requests`` (``PATTERN`` or ``MOD:PATTERN``) against the functions in
    ``kallsyms`` (a SymbolTable) and, for ``MOD:PATTERN`` of a module not loaded yet, the
    functions its module file keeps after init (``module_files``, a ModuleFiles); plain
    names pass through. A glob matching nothing raises NotTraceable."""
    out = []
    for request in requests:
        if not any(ch in request for ch in "*?["):
            out.append(request)
            continue
        module, _, pattern = request.rpartition(":")
        names = kallsyms.function_names(module or None)
        if module and not names and module_files is not None:
            found = module_files.functions(module)
            if found is not None:
                names = {name for name in found.functions if found.has(name)}
        matches = sorted(
            n for n in names if fnmatch.fnmatchcase(n, pattern) and not n.startswith("__pfx_")
        )
        if not matches:
            raise NotTraceable(
                f"no function matches '{request}'",
                "check the pattern; `memtrace doctor` lists known targets",
            )
        out.extend(f"{module}:{n}" if module else n for n in matches)
    return out


def build_plan(requests, source, resolve_offsets, strict, required=()):
    """Resolve ``requests`` (names, MOD:SYM) into a Plan.

    ``resolve_offsets(module, struct, path)`` returns (offset, member) from BTF or None.
    With ``strict`` a name that cannot be probed raises; otherwise it is listed in
    ``Plan.skipped`` with the reason (the default target set on kernels lacking some).
    Names in ``required`` raise even when not ``strict`` (what the user asked for by name).
    """
    plan, seen = Plan([]), set()
    required = frozenset(required)
    for request in requests:
        try:
            resolution = targets.resolve(request, source)
        except MemtraceError as err:
            if strict or request in required:
                raise
            plan.skipped.append((request, err.one_line()))
            continue
        if resolution.probe_name in seen:
            continue
        seen.add(resolution.probe_name)
        fn = resolution.target.name if resolution.target else request
        probe = PlannedProbe(fn, resolution, spec_for(resolution.symbol))
        _resolve_fields(probe, resolve_offsets)
        plan.probes.append(probe)
    return plan


def _resolve_fields(probe, resolve_offsets):
    fields = {f.field for f in probe.spec.fetch if f.field}
    if not fields:
        return
    sources = set()
    for struct_name, path in fields:
        found = resolve_offsets(probe.module, struct_name, path)
        if found is None:
            probe.offsets[(struct_name, path)] = FALLBACK_OFFSETS[(struct_name, path)]
            sources.add("fallback")
            member = None
        else:
            probe.offsets[(struct_name, path)], member = found
            sources.add("btf")
        for fetch in probe.spec.fetch:
            if fetch.field == (struct_name, path) and member:
                probe.field_units[fetch.name] = member
    probe.offsets_from = "btf" if sources == {"btf"} else "fallback"


def fetch_offset(probe, fetch) -> Optional[int]:
    """The byte offset a backend dereferences for ``fetch`` (None: read the argument)."""
    return probe.offsets.get(fetch.field) if fetch.field else None

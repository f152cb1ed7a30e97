"""THE table of kernel functions memtrace probes, and how a requested name becomes a probe.

Kernels differ in what a function is called (``reserve_memtype`` before v5.6), whether it
still exists (``track_pfn_remap`` gave way to ``pfnmap_track``) and whether the compiler kept
it out of line (``drm_gem_vram_bo_driver_move`` is inlined into ``bo_driver_move``). All of that
is written down once, in TARGETS, and chosen by which symbols the running kernel has, never by
its version string. ``resolve`` turns a requested name into the symbol to probe, or raises
NotTraceable saying why not.
"""

import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, NamedTuple, Optional, Tuple

from memtrace.analysis.name_index import NameIndex, closest_by_tiers
from memtrace.errors import MemtraceError, NotTraceable
from memtrace.probes.kallsyms import SymbolTable, clone_base
from memtrace.probes.kmod_symbols import ModuleFiles

# Roles: what memtrace learns from a target.
RESERVE = "reserve"  # a PAT memtype reservation is taken (range, requested/granted type)
FREE = "free"  # a reservation or mapping is released
IOREMAP = "ioremap"  # the kernel maps MMIO with a chosen cache mode
MOVER = "mover"  # TTM/DRM copies a buffer object (the slow path when memory is UC-)
MAPPING = "mapping"  # a user mmap of PFNs (PCI BAR sysfs files, TTM faults) takes a type
MTRR = "mtrr"  # an MTRR is added or removed: the memory type below PAT's

# How a request was resolved.
EXACT = "exact"
ALTERNATIVE = "alternative name"
INLINED = "inlined into caller"


@dataclass(frozen=True)
class Candidate:
    """One kernel symbol that can stand for a target, and how it relates to the target.

    Per-candidate argument decoding (registers, offsets) belongs here too, because it
    differs between candidates (``track_pfn_remap`` takes a VMA, ``pfnmap_track`` a pfn).
    """

    symbol: str
    note: str = ""


@dataclass(frozen=True)
class InlinedInto:
    """A caller to probe when the compiler folded the target into it."""

    caller: str
    explanation: str


@dataclass(frozen=True)
class Target:
    """A logical function memtrace traces, with its names across kernels in preference order.

    ``module`` is None for vmlinux. ``essential`` targets are the ones PAT tracing cannot do
    without: ``memtrace doctor`` fails when one of them cannot be probed.
    """

    name: str
    role: str
    candidates: Tuple[Candidate, ...]
    module: Optional[str] = None
    inlined_into: Tuple[InlinedInto, ...] = ()
    essential: bool = False

    @property
    def symbols(self):
        """The candidate symbol names, most preferred first."""
        return tuple(c.symbol for c in self.candidates)


_RENAMED_IN_5_6 = (
    'its name before v5.6 (ecdd6ee77b73 "x86/mm/pat: Standardize on memtype_*() prefix for '
    'APIs"); same arguments'
)


def _ioremap(name, essential=False, role=IOREMAP):
    return Target(name, role, (Candidate(name),), essential=essential)


def _mtrr(name):
    return Target(name, MTRR, (Candidate(name),))


TARGETS = (
    Target(
        "memtype_reserve",
        RESERVE,
        (Candidate("memtype_reserve"), Candidate("reserve_memtype", _RENAMED_IN_5_6)),
        essential=True,
    ),
    Target(
        "memtype_free",
        FREE,
        (Candidate("memtype_free"), Candidate("free_memtype", _RENAMED_IN_5_6)),
        essential=True,
    ),
    Target(
        "memtype_kernel_map_sync",
        RESERVE,
        (
            Candidate("memtype_kernel_map_sync"),
            Candidate("kernel_map_sync_memtype", _RENAMED_IN_5_6),
        ),
        essential=True,
    ),
    _ioremap("ioremap", essential=True),
    _ioremap("ioremap_uc"),
    _ioremap("ioremap_wc", essential=True),
    _ioremap("ioremap_wt"),
    _ioremap("ioremap_cache"),
    _ioremap("ioremap_prot"),
    _ioremap("ioremap_encrypted"),
    _ioremap("iounmap", essential=True, role=FREE),
    _ioremap("arch_io_reserve_memtype_wc", role=RESERVE),
    Target(
        "track_pfn_remap",
        MAPPING,
        (
            Candidate("track_pfn_remap"),
            Candidate(
                "pfnmap_track",
                "track_pfn_remap's successor since the 2025 pfnmap-tracking rework (absent "
                "in 6.12, present in 6.18); it takes (pfn, size, pgprot_t *prot), no VMA",
            ),
        ),
    ),
    Target(
        "reserve_pfn_range",
        MAPPING,
        (Candidate("reserve_pfn_range"),),
        inlined_into=(
            InlinedInto(
                "pfnmap_track",
                "reserve_pfn_range is static and, since the 2025 pfnmap-tracking rework, "
                "called only by pfnmap_track, which inlines it (6.18); pfnmap_track gets a "
                "pfn where reserve_pfn_range got a physical address",
            ),
        ),
    ),
    # /proc/mtrr writes and drivers' mtrr_add() reach mtrr_add_page/mtrr_del_page;
    # arch_phys_wc_add adds a WC MTRR only when PAT is off (through mtrr_add_page).
    _mtrr("mtrr_add_page"),
    _mtrr("mtrr_del_page"),
    _mtrr("arch_phys_wc_add"),
    _mtrr("arch_phys_wc_del"),
    Target("ttm_move_memcpy", MOVER, (Candidate("ttm_move_memcpy"),), module="ttm"),
    Target("ttm_bo_move_memcpy", MOVER, (Candidate("ttm_bo_move_memcpy"),), module="ttm"),
    Target(
        "ttm_kmap_iter_linear_io_init",
        IOREMAP,
        (Candidate("ttm_kmap_iter_linear_io_init"),),
        module="ttm",
    ),
    Target(
        "drm_gem_vram_bo_driver_move",
        MOVER,
        (Candidate("drm_gem_vram_bo_driver_move"),),
        module="drm_vram_helper",
        inlined_into=(
            InlinedInto(
                "bo_driver_move",
                "drm_gem_vram_bo_driver_move is static and its only caller is the TTM "
                "callback bo_driver_move, which inlines it (Debian 6.1 and 6.12); "
                "bo_driver_move takes the same arguments plus a trailing `hop`",
            ),
        ),
    ),
)


def find_target(name, module=None):
    """Return the Target that ``name`` (a target name or any candidate) stands for, or None.

    A request naming a module only matches targets of that module.
    """
    for target in TARGETS:
        if module is not None and module != target.module:
            continue
        if name == target.name or name in target.symbols:
            return target
    return None


@dataclass
class SymbolSource:
    """What ``resolve`` consults: kallsyms, module files and the kernel's probe lists.

    ``kprobe_blacklist`` (names) and ``filter_functions`` ((name, module) pairs from
    available_filter_functions) are None when they could not be read.
    """

    kallsyms: SymbolTable
    module_files: Optional[ModuleFiles] = None
    kprobe_blacklist: Optional[FrozenSet[str]] = None
    filter_functions: Optional[FrozenSet[tuple]] = None
    # module (None: any) -> the NameIndex its suggestions come from, built at the first miss.
    _name_indexes: Dict[Optional[str], NameIndex] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )


@dataclass(frozen=True)
class Resolution:
    """What memtrace will probe for a request, and why that symbol.

    ``loaded`` is False for a function of a module that is not loaded yet (found in its
    module file); ``in_filter_functions`` is None when that list was unreadable or the module
    is not loaded.
    """

    requested: str
    symbol: str
    module: Optional[str]
    loaded: bool
    how: str
    explanation: str = ""
    target: Optional[Target] = None
    module_file: Optional[str] = None
    in_filter_functions: Optional[bool] = None

    @property
    def probe_name(self):
        """The name a kprobe takes: ``MOD:SYM`` for module code, else ``SYM``."""
        return f"{self.module}:{self.symbol}" if self.module else self.symbol


class _Found(NamedTuple):
    module: Optional[str]
    loaded: bool
    module_file: Optional[str] = None
    note: str = ""


class _Lookup(NamedTuple):
    found: Optional[_Found]
    reason: str


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.$]*$")
_CLONE_REASONS = {
    "isra": "IPA-SRA rewrote its argument list",
    "constprop": "constant propagation baked some arguments in",
    "part": "partial inlining moved its entry into the callers",
    "lto_priv": "an LTO-private copy, not the function callers use",
    "localalias": "an alias the compiler made for local calls",
}


def split_request(requested):
    """Split ``MOD:SYM`` into ``(module, symbol)``; a plain name gives ``(None, name)``."""
    module, colon, name = requested.strip().rpartition(":")
    module = module if colon else None
    if not _NAME_RE.match(name) or (module is not None and not _NAME_RE.match(module)):
        raise NotTraceable(
            f"'{requested}' is not a function name",
            hint="give SYM or MOD:SYM, e.g. memtype_reserve or ttm:ttm_move_memcpy",
        )
    return module, name


def _locate_in_module_file(name, module, source):
    files = source.module_files
    if files is None or not files.available:
        where = files.release_dir if files is not None else "/lib/modules/<release>"
        return _Lookup(None, f"module {module} is not loaded and {where} does not exist")
    if files.is_builtin(module):
        return _Lookup(None, f"{module} is built in, and vmlinux has no function {name}")
    functions = files.functions(module)
    if functions is None:
        return _Lookup(
            None, f"module {module} is not loaded and has no file under {files.release_dir}"
        )
    if not functions.has(name):
        why = "init code, freed after loading" if name in functions.functions else "no"
        return _Lookup(None, f"{functions.path} has {why} function {name}")
    return _Lookup(_Found(module, False, functions.path), "")


def _locate(name, module, source):
    """Find the function ``name`` (of ``module``, or vmlinux/any module when None)."""
    kallsyms = source.kallsyms
    if module is None:
        owners = {s.module for s in kallsyms.functions(name)}
        if None in owners or len(owners) == 1:
            owner = None if None in owners else owners.pop()
            return _Lookup(_Found(owner, True), "")
        if owners:
            choices = ", ".join(f"{m}:{name}" for m in sorted(owners))
            raise NotTraceable(f"{name} exists in several modules", hint=f"name one: {choices}")
        return _Lookup(None, f"no function {name} in /proc/kallsyms")
    if kallsyms.has_function(name, module):
        return _Lookup(_Found(module, True), "")
    if module in kallsyms.loaded_modules:
        return _Lookup(None, f"module {module} is loaded but has no function {name}")
    files = source.module_files
    if files is not None and files.is_builtin(module) and kallsyms.has_function(name, None):
        return _Lookup(_Found(None, True, note=f"{module} is built into vmlinux"), "")
    return _locate_in_module_file(name, module, source)


def _unloaded_module_functions(module, source):
    """The module file's functions when ``module`` is named but not loaded, else None."""
    files = source.module_files
    if module is None or module in source.kallsyms.loaded_modules:
        return None
    if files is None or not files.available:
        return None
    return files.functions(module)


def _entry_clones(name, module, source):
    """Names of ``name``'s compiler clones that are function entries (not ``.cold`` parts)."""
    names = {s.name for s in source.kallsyms.clones(name, module)}
    functions = _unloaded_module_functions(module, source)
    if functions is not None:
        names.update(functions.functions)
    clones = []
    for candidate in names:
        parsed = clone_base(candidate)
        if parsed is not None and parsed[0] == name and "cold" not in parsed[1]:
            clones.append(candidate)
    return sorted(clones)


def _refuse_clones(requested, name, module, source):
    clones = _entry_clones(name, module, source)
    if not clones:
        return
    kinds = clone_base(clones[0])[1]
    why = _CLONE_REASONS.get(kinds[-1], "a compiler-made copy")
    raise NotTraceable(
        f"{requested}: only the compiler clone {', '.join(clones)} exists ({why}); "
        "probing it would read the wrong arguments",
        hint="probe a caller or a callee instead (`memtrace doctor` lists the known targets)",
    )


def _unloaded_target_module_with(name, source):
    """The first module of TARGETS, not loaded, whose file defines ``name``, or None."""
    files = source.module_files
    if files is None or not files.available:
        return None
    for module in sorted({t.module for t in TARGETS if t.module}):
        if module in source.kallsyms.loaded_modules:
            continue
        try:
            functions = files.functions(module)
        except MemtraceError:
            continue  # an unreadable module file only costs this suggestion
        if functions is not None and functions.has(name):
            return module
    return None


def _name_index(module, source, module_functions):
    """The NameIndex over the functions of ``module`` (any when None) that a misspelt name
    is compared with: kallsyms' and those of its module file; ``__pfx_`` padding aside."""
    index = source._name_indexes.get(module)
    if index is None:
        pool = source.kallsyms.function_names(module)
        if module_functions is not None:
            pool = pool | set(module_functions.functions)
        index = source._name_indexes[module] = NameIndex(pool, skip_prefix="__pfx_")
    return index


def _suggestions(name, module, source):
    """A hint for a name that does not resolve: a MOD:SYM to use, or the closest names."""
    module_functions = _unloaded_module_functions(module, source)
    if module is None:
        other = _unloaded_target_module_with(name, source)
        if other is not None:
            return f"did you mean {other}:{name}? (module {other} is not loaded)"
    index = _name_index(module, source, module_functions)
    # Near misses first; then looser matches, so that a name far from everything still gets
    # the nearest few rather than nothing.
    close = closest_by_tiers(index.ranked(name, cutoff=0.45), (0.8, 0.6, 0.45))
    if close:
        prefix = f"{module}:" if module else ""
        return "closest names: " + ", ".join(prefix + n for n in close)
    module_absent = module not in source.kallsyms.loaded_modules and module_functions is None
    if module is not None and module_absent:
        return f"run where module {module} exists, e.g. in a `memtrace lab` guest"
    return "check the spelling; `memtrace doctor` lists the functions memtrace knows"


def _resolution(requested, name, found, how, source, explanation="", target=None):
    if source.kprobe_blacklist is not None and name in source.kprobe_blacklist:
        raise NotTraceable(
            f"{requested}: {name} is on the kprobe blacklist, the kernel refuses probes there",
            hint="probe its caller instead",
        )
    in_filter = None
    if source.filter_functions is not None and found.loaded:
        in_filter = (name, found.module) in source.filter_functions
    explanation = "; ".join(part for part in (explanation, found.note) if part)
    return Resolution(
        requested,
        name,
        found.module,
        found.loaded,
        how,
        explanation,
        target,
        found.module_file,
        in_filter,
    )


def _resolve_target(requested, name, target, source):
    requested_note = next((c.note for c in target.candidates if c.symbol == name), "")
    misses = []
    for candidate in target.candidates:
        lookup = _locate(candidate.symbol, target.module, source)
        if lookup.found is None:
            misses.append(lookup.reason)
            continue
        if candidate.symbol == name:
            return _resolution(requested, name, lookup.found, EXACT, source, target=target)
        explanation = f"no {name} on this kernel; probing {candidate.symbol}"
        if candidate.note:
            explanation = f"{explanation}, {candidate.note}"
        elif requested_note:
            explanation = f"{explanation}: {name} is {requested_note}"
        return _resolution(
            requested, candidate.symbol, lookup.found, ALTERNATIVE, source, explanation, target
        )
    for inlined in target.inlined_into:
        lookup = _locate(inlined.caller, target.module, source)
        if lookup.found is not None:
            explanation = inlined.explanation
            return _resolution(
                requested, inlined.caller, lookup.found, INLINED, source, explanation, target
            )
    for symbol in target.symbols:
        _refuse_clones(requested, symbol, target.module, source)
    raise NotTraceable(
        f"{requested}: " + "; ".join(dict.fromkeys(misses)),
        hint=_suggestions(name, target.module, source),
    )


def resolve(requested, source):
    """Resolve ``requested`` (``SYM``, ``MOD:SYM`` or a TARGETS name) against ``source``.

    Returns a Resolution; raises NotTraceable (message plus hint naming the closest existing
    names) when nothing can be probed: absent, only a compiler clone, or blacklisted.
    """
    module, name = split_request(requested)
    target = find_target(name, module)
    if target is not None:
        return _resolve_target(requested, name, target, source)
    lookup = _locate(name, module, source)
    if lookup.found is not None:
        return _resolution(requested, name, lookup.found, EXACT, source)
    _refuse_clones(requested, name, module, source)
    raise NotTraceable(f"{requested}: {lookup.reason}", hint=_suggestions(name, module, source))

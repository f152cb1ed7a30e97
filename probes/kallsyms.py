"""The running kernel's symbols, from /proc/kallsyms: which functions exist, where, as what.

A line is ``address type name`` plus ``[module]`` for module symbols. Addresses read as zero
for a reader that ``kallsyms_show_value()`` refuses (non-root, kptr_restrict); names and types
are still right, and that is all memtrace needs here.
"""

import re
from collections import defaultdict
from typing import NamedTuple, Optional

from memtrace.errors import BadInput, FeatureMissing, NotRoot, os_reason

KALLSYMS_PATH = "/proc/kallsyms"

# kallsyms type letters of code: t/T text, w/W weak (only code is listed without KALLSYMS_ALL).
TEXT_TYPES = frozenset("tTwW")

# GCC names the copies it makes of a function NAME.<suffix>[.<n>]; they can chain
# (foo.constprop.0.isra.0) and end in .cold for the split-off unlikely part.
CLONE_SUFFIXES = frozenset({"isra", "constprop", "part", "cold", "lto_priv", "localalias"})


class KernelSymbol(NamedTuple):
    """One kallsyms entry; ``module`` is None for vmlinux (built-in code included)."""

    address: int
    type: str
    name: str
    module: Optional[str]

    @property
    def is_function(self):
        """True when the entry is code (t, T, w or W)."""
        return self.type in TEXT_TYPES


def _is_pseudo_module(owner):
    # JIT-ed BPF programs and ftrace trampolines are listed like modules but are none.
    return owner == "bpf" or owner.startswith("__builtin__")


def clone_base(name):
    """Split a compiler clone's name into its base and the clone kinds.

    ``"f.constprop.0.isra.0"`` gives ``("f", ("constprop", "isra"))``. Returns None for a
    plain name or a dotted name that is no clone (``CSWTCH.12``).
    """
    base, dot, rest = name.partition(".")
    if not dot or not base:
        return None
    kinds = tuple(part for part in rest.split(".") if not part.isdigit())
    if not kinds or not CLONE_SUFFIXES.issuperset(kinds):
        return None
    return base, kinds


class SymbolTable:
    """An index over kallsyms entries: presence, type, owning module and compiler clones."""

    def __init__(self, symbols, skipped_lines=0):
        self.skipped_lines = skipped_lines
        self._by_name = defaultdict(list)
        self._modules = set()
        self._clones = None
        self._any_address = False
        for symbol in symbols:
            self._by_name[symbol.name].append(symbol)
            if symbol.module is not None:
                self._modules.add(symbol.module)
            if symbol.address:
                self._any_address = True

    def __len__(self):
        return sum(len(entries) for entries in self._by_name.values())

    @property
    def addresses_hidden(self):
        """True when every address read as zero (kallsyms was read without the right)."""
        return bool(self._by_name) and not self._any_address

    @property
    def loaded_modules(self):
        """Names of the loaded modules (kallsyms' ``[bpf]``/``[__builtin__*]`` owners aside)."""
        return frozenset(m for m in self._modules if not _is_pseudo_module(m))

    def functions(self, name, module=None):
        """Return the code entries named ``name``; only ``module``'s when one is given.

        ``module=None`` returns every owner, vmlinux first.
        """
        found = [s for s in self._by_name.get(name, ()) if s.is_function]
        if module is not None:
            return [s for s in found if s.module == module]
        return sorted(found, key=lambda s: s.module is not None)

    def has_function(self, name, module=None):
        """True when code named ``name`` exists (in ``module`` when given)."""
        return bool(self.functions(name, module))

    def clones(self, base, module=None):
        """Return the compiler clones of ``base`` (``base.isra.0``, ``base.cold``...)."""
        if self._clones is None:
            self._clones = defaultdict(list)
            for name, entries in self._by_name.items():
                parsed = clone_base(name) if "." in name else None
                if parsed is not None:
                    self._clones[parsed[0]].extend(s for s in entries if s.is_function)
        found = self._clones.get(base, ())
        return [s for s in found if module is None or s.module == module]

    def function_names(self, module=None):
        """Return the set of code names (of ``module`` only when given)."""
        return {
            name
            for name, entries in self._by_name.items()
            if any(s.is_function and (module is None or s.module == module) for s in entries)
        }


_LINE_RE = re.compile(r"^([0-9a-fA-F]+) (\S) (\S+)(?:[ \t]+\[(\S+)\])?[ \t]*$", re.M)


def parse_kallsyms(text):
    """Parse kallsyms text into a SymbolTable; malformed lines are counted, not fatal.

    A guest under emulation reads 170,000 lines, so the lines are matched in one regex pass
    rather than split one by one.
    """
    symbols = [
        KernelSymbol(int(address, 16), kind, name, module or None)
        for address, kind, name, module in _LINE_RE.findall(text)
    ]
    lines = sum(1 for line in text.splitlines() if line.strip())
    return SymbolTable(symbols, skipped_lines=lines - len(symbols))


def read_kallsyms(path=KALLSYMS_PATH):
    """Read and parse ``path`` (default /proc/kallsyms) into a SymbolTable."""
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise FeatureMissing(
            f"{path} does not exist", hint="the kernel was built without CONFIG_KALLSYMS"
        ) from None
    except PermissionError:
        raise NotRoot(f"cannot read {path}", hint="run memtrace as root") from None
    except OSError as err:
        raise BadInput(f"cannot read {path}: {os_reason(err)}") from None
    table = parse_kallsyms(text)
    if len(table) == 0:
        raise BadInput(f"{path} lists no symbols", hint="is this a kallsyms file?")
    return table


MODULES_PATH = "/proc/modules"


def _read_optional(path):
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return stream.read()
    except OSError:
        return None


class ModuleIndex:
    """Which loaded module defines a kernel function, for naming stack frames while a trace
    runs (both backends).

    Only the module lines of kallsyms are parsed (``[module]`` marks them): vmlinux is most of
    the file, and this is re-read whenever a module loads, which under emulation costs
    seconds per full parse. A name both vmlinux and a module define therefore reads as the
    module's; kallsyms has no such pair on the kernels memtrace is tested on.
    """

    def __init__(self, kallsyms_path=KALLSYMS_PATH, modules_path=MODULES_PATH):
        self.kallsyms_path = kallsyms_path
        self.modules_path = modules_path
        self._table = None
        self._modules = None

    def refresh(self, force=False):
        """Drop the index when /proc/modules changed since it was read (or ``force``);
        return True when dropped."""
        modules = _read_optional(self.modules_path)
        if not force and modules == self._modules:
            return False
        self._modules, self._table = modules, None
        return True

    def _load(self):
        if self._modules is None:
            self._modules = _read_optional(self.modules_path)
        text = _read_optional(self.kallsyms_path) or ""
        module_lines = "\n".join(line for line in text.splitlines() if "[" in line)
        self._table = parse_kallsyms(module_lines)
        return self._table

    def owners(self, name):
        """The modules whose code defines function ``name`` (empty: vmlinux or unknown)."""
        table = self._table if self._table is not None else self._load()
        return {symbol.module for symbol in table.functions(name)}

    def module_of(self, name, prefer=None):
        """The module of function ``name``; None for vmlinux, unknown or ambiguous names
        (``prefer`` settles a name several modules define). A name not found re-reads
        kallsyms, but only when /proc/modules changed (a static symbol kallsyms lacks would
        otherwise cost a re-read per stack)."""
        owners = self.owners(name)
        if not owners and self.refresh():
            owners = self.owners(name)
        if len(owners) == 1:
            return owners.pop()
        return prefer if prefer in owners else None

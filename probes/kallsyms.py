"""The running kernel's symbols, from /proc/kallsyms: which functions exist, where, as what.

A line is ``address type name`` plus ``[module]`` for module symbols. Addresses read as zero
for a reader that ``kallsyms_show_value()`` refuses (non-root, kptr_restrict); names and types
are still right, and that is all memtrace needs here.
"""

import re
from typing import Dict, List, NamedTuple, Optional

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
    """An index over kallsyms entries: presence, type, owning module and compiler clones.

    Built from kallsyms text (``parse_kallsyms``), it keeps that text and answers each
    question when first asked, by a search of the text, then from memory: a lookup of one
    name needs no object per line of the ~120,000 others. ``SymbolTable(symbols)`` takes
    KernelSymbol entries instead (as kallsyms lists them: no white space in a name).
    """

    def __init__(self, symbols=(), skipped_lines=0):
        text = "".join(_kallsyms_line(symbol) for symbol in symbols)
        self._setup(text, skipped_lines)

    @classmethod
    def _of_text(cls, text):
        table = cls.__new__(cls)
        table._setup(text, None)
        return table

    def _setup(self, text, skipped_lines):
        self._text = text
        self._skipped_lines = skipped_lines
        # name -> its entries, filled by each name's first lookup (misses included).
        self._by_name = {}
        self._clones = {}
        self._function_names = {}
        self._modules = None
        self._length = None
        self._any_address = None
        self._module_lines_at = None

    @property
    def skipped_lines(self):
        """How many non-blank lines of the text were not kallsyms entries."""
        if self._skipped_lines is None:
            lines = sum(1 for line in self._text.splitlines() if line.strip())
            self._skipped_lines = lines - len(self)
        return self._skipped_lines

    def __len__(self):
        if self._length is None:
            self._length = len(_ENTRY_RE.findall(self._text))
        return self._length

    def __bool__(self):
        if self._length is not None:
            return self._length != 0
        return _ENTRY_RE.search(self._text) is not None

    def _module_start(self):
        """Where the first line holding a ``[`` starts: no module entry comes before."""
        if self._module_lines_at is None:
            bracket = self._text.find("[")
            if bracket < 0:
                self._module_lines_at = len(self._text)
            else:
                self._module_lines_at = self._text.rfind("\n", 0, bracket) + 1
        return self._module_lines_at

    def _lines_naming(self, prefix, whole=False):
        """The entries (``_LINE_RE`` matches, in order) whose name starts with ``prefix``, or
        is ``prefix`` when ``whole``: each line holding `` prefix`` is matched in full."""
        text, needle = self._text, " " + prefix
        at = text.find(needle)
        while at >= 0:
            line_end = text.find("\n", at)
            if line_end < 0:
                line_end = len(text)
            after = at + len(needle)
            if not whole or after == line_end or text[after].isspace():
                match = _LINE_RE.match(text, text.rfind("\n", 0, at) + 1)
                if match is not None and match.group(3).startswith(prefix):
                    yield match
            at = text.find(needle, line_end)

    def _entries(self, name):
        found = self._by_name.get(name)
        if found is None:
            found = []
            if _is_word(name):
                found = [_symbol(m) for m in self._lines_naming(name, True) if m[3] == name]
            self._by_name[name] = found
        return found

    @property
    def addresses_hidden(self):
        """True when every address read as zero (kallsyms was read without the right)."""
        if self._any_address is None:
            self._any_address = _NONZERO_ENTRY_RE.search(self._text) is not None
        return not self._any_address and bool(self)

    @property
    def loaded_modules(self):
        """Names of the loaded modules (kallsyms' ``[bpf]``/``[__builtin__*]`` owners aside)."""
        if self._modules is None:
            found = set(_MODULE_RE.findall(self._text, self._module_start()))
            self._modules = frozenset(m for m in found if not _is_pseudo_module(m))
        return self._modules

    def functions(self, name, module=None):
        """Return the code entries named ``name``; only ``module``'s when one is given.

        ``module=None`` returns every owner, vmlinux first.
        """
        found = [s for s in self._entries(name) if s.is_function]
        if module is not None:
            return [s for s in found if s.module == module]
        return sorted(found, key=lambda s: s.module is not None)

    def has_function(self, name, module=None):
        """True when code named ``name`` exists (in ``module`` when given)."""
        return bool(self.functions(name, module))

    def clones(self, base, module=None):
        """Return the compiler clones of ``base`` (``base.isra.0``, ``base.cold``...)."""
        found = self._clones.get(base)
        if found is None:
            # Grouped by name, names in the order they first appear, as before.
            by_name: Dict[str, List[KernelSymbol]] = {}
            for match in self._lines_naming(base + "."):
                symbol = _symbol(match)
                parsed = clone_base(symbol.name)
                if parsed is not None and parsed[0] == base:
                    by_name.setdefault(symbol.name, []).append(symbol)
            found = [s for entries in by_name.values() for s in entries if s.is_function]
            self._clones[base] = found
        return [s for s in found if module is None or s.module == module]

    def function_names(self, module=None):
        """Return the frozenset of code names (of ``module`` only when given), made once."""
        found = self._function_names.get(module)
        if found is None:
            if module is None:
                names = _FUNCTION_NAME_RE.findall(self._text)
            elif not _is_word(module):
                names = []
            else:
                pattern = re.compile(_MODULE_FUNCTION_NAME % re.escape(module), re.M)
                names = pattern.findall(self._text, self._module_start())
            found = self._function_names[module] = frozenset(names)
        return found


def _kallsyms_line(symbol):
    owner = f"\t[{symbol.module}]" if symbol.module else ""
    return f"{symbol.address:x} {symbol.type} {symbol.name}{owner}\n"


def _symbol(match):
    address, kind, name, module = match.groups()
    return KernelSymbol(int(address, 16), kind, name, module or None)


_LINE_RE = re.compile(r"^([0-9a-fA-F]+) (\S) (\S+)(?:[ \t]+\[(\S+)\])?[ \t]*$", re.M)
# The same lines as _LINE_RE, for counting them or picking one part out at C speed.
_ENTRY_RE = re.compile(r"^[0-9a-fA-F]+ \S \S+(?:[ \t]+\[\S+\])?[ \t]*$", re.M)
_NONZERO_ENTRY_RE = re.compile(r"^0*[1-9a-fA-F][0-9a-fA-F]* \S \S+(?:[ \t]+\[\S+\])?[ \t]*$", re.M)
_MODULE_RE = re.compile(r"^[0-9a-fA-F]+ \S \S+[ \t]+\[(\S+)\][ \t]*$", re.M)
_FUNCTION_NAME_RE = re.compile(r"^[0-9a-fA-F]+ [tTwW] (\S+)(?:[ \t]+\[\S+\])?[ \t]*$", re.M)
_MODULE_FUNCTION_NAME = r"^[0-9a-fA-F]+ [tTwW] (\S+)[ \t]+\[%s\][ \t]*$"
_SPACE_RE = re.compile(r"\s")


def _is_word(name):
    """True when ``name`` could be a kallsyms name or module: not empty, no white space."""
    return bool(name) and _SPACE_RE.search(name) is None


def parse_kallsyms(text):
    """Parse kallsyms text into a SymbolTable; malformed lines are counted, not fatal.

    Nothing is parsed up front: a guest under emulation reads 170,000 lines, and a run asks
    about a few dozen names (see SymbolTable).
    """
    return SymbolTable._of_text(text)


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
    if not table:
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
        self._owners = None
        self._modules = None

    def refresh(self, force=False):
        """Drop the index when /proc/modules changed since it was read (or ``force``);
        return True when dropped."""
        modules = _read_optional(self.modules_path)
        if not force and modules == self._modules:
            return False
        self._modules, self._owners = modules, None
        return True

    def _load(self):
        if self._modules is None:
            self._modules = _read_optional(self.modules_path)
        text = _read_optional(self.kallsyms_path) or ""
        module_lines = "\n".join(line for line in text.splitlines() if "[" in line)
        # A dict built whole, not a SymbolTable: a trace looks up a name per stack frame.
        self._owners = {}
        for _, kind, name, module in _LINE_RE.findall(module_lines):
            if kind in TEXT_TYPES:
                self._owners.setdefault(name, set()).add(module or None)
        return self._owners

    def owners(self, name):
        """The modules whose code defines function ``name`` (empty: vmlinux or unknown)."""
        owners = self._owners if self._owners is not None else self._load()
        return set(owners.get(name, ()))

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

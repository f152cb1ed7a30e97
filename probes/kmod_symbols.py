"""Functions of kernel modules that are not loaded, read from their .ko files.

This answers "will MOD:SYM exist once the module loads?": the module file under
/lib/modules/<release>/ is found through modules.dep (or by walking the tree), decompressed
(.ko, .ko.gz, .ko.xz, .ko.zst) and its ELF64 symbol table read with ``struct`` alone. Every
FUNC symbol, local or global, becomes a kallsyms entry when the module loads, except those in
init sections, which the kernel frees after the module's init ran.
"""

import gzip
import lzma
import os
import struct
from dataclasses import dataclass
from typing import Dict, Optional

from memtrace.errors import BadInput, FeatureMissing

MODULES_DIR = "/lib/modules"
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")

_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_SHT_SYMTAB = 2
_STT_FUNC = 2
_BINDINGS = {0: "local", 1: "global", 2: "weak"}
_SHN_LORESERVE = 0xFF00

_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")
_SYMBOL = struct.Struct("<IBBHQQ")


@dataclass(frozen=True)
class ElfFunction:
    """A FUNC symbol of a module file: name, binding (local/global/weak) and section name."""

    name: str
    binding: str
    section: str

    @property
    def freed_after_init(self):
        """True for code in an init section: gone from kallsyms once the module is up."""
        return self.section.startswith(".init")


@dataclass(frozen=True)
class ModuleFunctions:
    """The functions one module file defines."""

    module: str
    path: str
    functions: Dict[str, ElfFunction]

    def has(self, name):
        """True when the module defines ``name`` and keeps it after init."""
        function = self.functions.get(name)
        return function is not None and not function.freed_after_init


def module_name(path):
    """Return the kernel's name for a module file: ``.../drm-foo.ko.xz`` -> ``drm_foo``."""
    base = os.path.basename(path)
    for suffix in sorted(MODULE_SUFFIXES, key=len, reverse=True):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text):
    """Map module name -> path relative to the release directory, from modules.dep text."""
    paths: Dict[str, str] = {}
    for line in text.splitlines():
        path, colon, _deps = line.partition(":")
        path = path.strip()
        if colon and path:
            paths.setdefault(module_name(path), path)
    return paths


def find_zstd():
    """Return a zstd ``decompress(bytes) -> bytes`` from this Python's libraries, or None."""
    try:
        from compression import zstd  # the standard library's, from Python 3.14

        return zstd.decompress
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        return None
    return lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)


def read_module_file(path):
    """Return the uncompressed ELF bytes of a module file (.ko, .ko.gz, .ko.xz, .ko.zst)."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
        if path.endswith(".xz"):
            return lzma.decompress(data)
        if path.endswith(".gz"):
            return gzip.decompress(data)
    except OSError as err:
        raise BadInput(f"cannot read module file {path}: {err.strerror or err}") from None
    except (lzma.LZMAError, EOFError) as err:
        raise BadInput(f"{path}: corrupt compressed data ({err})") from None
    if path.endswith(".zst"):
        decompress = find_zstd()
        if decompress is None:
            raise FeatureMissing(
                f"{path} is zstd-compressed and this Python cannot decompress zstd",
                hint="install python3-zstandard (apt) or zstandard (pip)",
            )
        return decompress(data)
    return data


def _c_string(table, offset):
    end = table.find(b"\0", offset)
    if offset >= len(table) or end < 0:
        raise ValueError(f"string offset {offset} outside its table")
    return table[offset:end].decode("ascii", "replace")


def _section(data, header_offset):
    if header_offset + _SECTION_HEADER.size > len(data):
        raise ValueError("section header past the end of the file")
    return _SECTION_HEADER.unpack_from(data, header_offset)


def _section_bytes(data, section):
    offset, size = section[4], section[5]
    if offset + size > len(data):
        raise ValueError("section contents past the end of the file")
    return data[offset : offset + size]


def _elf_sections(data):
    """Return ``[(name, header)]`` for every section of ELF64 little-endian ``data``."""
    if len(data) < _ELF_HEADER.size or data[:4] != _ELF_MAGIC:
        raise ValueError("not an ELF file")
    ident = data[:16]
    if ident[4] != _ELFCLASS64 or ident[5] != _ELFDATA2LSB:
        raise ValueError("not a little-endian ELF64 file")
    header = _ELF_HEADER.unpack_from(data, 0)
    shoff, shentsize, shnum, shstrndx = header[6], header[11], header[12], header[13]
    if shentsize != _SECTION_HEADER.size:
        raise ValueError(f"unexpected section header size {shentsize}")
    headers = [_section(data, shoff + i * shentsize) for i in range(shnum)]
    if shstrndx >= shnum:
        raise ValueError("section name table index out of range")
    names = _section_bytes(data, headers[shstrndx])
    return [(_c_string(names, h[0]), h) for h in headers]


def _elf_functions(data):
    sections = _elf_sections(data)
    symtab = next((h for _name, h in sections if h[1] == _SHT_SYMTAB), None)
    if symtab is None:
        raise ValueError("no .symtab section (stripped module?)")
    if symtab[6] >= len(sections):
        raise ValueError(".symtab names a string table that does not exist")
    strtab = _section_bytes(data, sections[symtab[6]][1])
    symbols = _section_bytes(data, symtab)
    functions = {}
    for offset in range(0, len(symbols) - _SYMBOL.size + 1, _SYMBOL.size):
        st_name, st_info, _other, st_shndx, _value, _size = _SYMBOL.unpack_from(symbols, offset)
        if st_info & 0xF != _STT_FUNC or st_name == 0:
            continue
        name = _c_string(strtab, st_name)
        in_range = st_shndx < min(len(sections), _SHN_LORESERVE)
        section = sections[st_shndx][0] if in_range else ""
        binding = _BINDINGS.get(st_info >> 4, "other")
        functions[name] = ElfFunction(name, binding, section)
    return functions


def _malformed(origin, err):
    return BadInput(f"{origin}: malformed ELF ({err})", hint="the module file may be truncated")


def parse_elf_functions(data, origin="module file"):
    """Return ``{name: ElfFunction}`` for every FUNC symbol in ELF64 ``data``.

    ``origin`` names the file in the error raised (BadInput) when ``data`` is malformed.
    """
    try:
        return _elf_functions(data)
    except (ValueError, struct.error, IndexError) as err:
        raise _malformed(origin, err) from None


def elf_section(data, name, origin="module file"):
    """Return the contents of section ``name`` (e.g. ``.BTF``) of ELF64 ``data``, or None.

    Raises BadInput, naming ``origin``, when ``data`` is malformed.
    """
    try:
        header = next((h for n, h in _elf_sections(data) if n == name), None)
        return None if header is None else _section_bytes(data, header)
    except (ValueError, struct.error, IndexError) as err:
        raise _malformed(origin, err) from None


class ModuleFiles:
    """Module files of one kernel release, located and parsed on demand, each once."""

    def __init__(self, release, modules_dir=MODULES_DIR):
        self.release = release
        self.release_dir = os.path.join(modules_dir, release)
        self._paths = None
        self._builtin = None
        self._parsed = {}

    @property
    def available(self):
        """True when /lib/modules/<release> exists at all."""
        return os.path.isdir(self.release_dir)

    def _index(self):
        if self._paths is None:
            try:
                with open(os.path.join(self.release_dir, "modules.dep")) as stream:
                    self._paths = parse_modules_dep(stream.read())
            except OSError:
                self._paths = self._walk()
        return self._paths

    def _walk(self):
        paths: Dict[str, str] = {}
        for directory, _subdirs, files in os.walk(self.release_dir):
            for name in files:
                if name.endswith(MODULE_SUFFIXES):
                    full = os.path.join(directory, name)
                    paths.setdefault(module_name(name), os.path.relpath(full, self.release_dir))
        return paths

    def is_builtin(self, module):
        """True when modules.builtin lists ``module`` (its code is part of vmlinux)."""
        if self._builtin is None:
            try:
                with open(os.path.join(self.release_dir, "modules.builtin")) as stream:
                    self._builtin = {module_name(line.strip()) for line in stream if line.strip()}
            except OSError:
                self._builtin = set()
        return module.replace("-", "_") in self._builtin

    def path_of(self, module):
        """Return the absolute path of ``module``'s file, or None when there is none."""
        relative = self._index().get(module.replace("-", "_"))
        return os.path.join(self.release_dir, relative) if relative else None

    def functions(self, module) -> Optional[ModuleFunctions]:
        """Return the functions of ``module``'s file, or None when the file does not exist."""
        if module not in self._parsed:
            path = self.path_of(module)
            if path is None:
                self._parsed[module] = None
            else:
                elf = parse_elf_functions(read_module_file(path), origin=path)
                self._parsed[module] = ModuleFunctions(module, path, elf)
        return self._parsed[module]

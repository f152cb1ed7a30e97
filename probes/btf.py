"""Just enough of a BTF reader to find struct member offsets on the running kernel.

Module BTF is "split" BTF: its type ids and string offsets continue those of vmlinux, so a
module's types are read together with /sys/kernel/btf/vmlinux. A module that is not loaded
yet is read from the .BTF section of its file.
"""

import os
import struct
from typing import Tuple

from memtrace.errors import FeatureMissing

BTF_DIR = "/sys/kernel/btf"
_MAGIC = 0xEB9F
_KIND_STRUCT, _KIND_UNION = 4, 5
_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG = 8, 9, 10, 11, 18
_QUALIFIERS = (_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG)
# Bytes that follow the 12-byte common header, per kind: fixed, and per vlen entry.
_TRAILER = {
    1: (4, 0),
    3: (12, 0),
    4: (0, 12),
    5: (0, 12),
    6: (0, 8),
    13: (0, 8),
    14: (4, 0),
    15: (0, 12),
    17: (4, 0),
    19: (0, 12),
}


class Btf:
    """Parsed BTF types: id -> (kind, name, size_or_type, members, kind_flag)."""

    def __init__(self, data, base=None):
        if len(data) < 24:
            raise ValueError("BTF data is shorter than its header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data, 0
        )
        if magic != _MAGIC:
            raise ValueError("not BTF (bad magic)")
        self.base = base
        self.strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types = {}
        self.first_id = (base.last_id + 1) if base else 1
        self.last_id = self.first_id - 1
        self._str_base = base.str_len if base else 0
        self.str_len = self._str_base + str_len
        self._parse(data[hdr_len + type_off : hdr_len + type_off + type_len])

    def _parse(self, blob):
        pos, type_id = 0, self.first_id
        while pos + 12 <= len(blob):
            name_off, info, size_or_type = struct.unpack_from("<III", blob, pos)
            kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            pos += 12
            fixed, per_entry = _TRAILER.get(kind, (0, 0))
            members: Tuple[Tuple[int, int, int], ...] = ()
            if kind in (_KIND_STRUCT, _KIND_UNION):
                members = tuple(struct.unpack_from("<III", blob, pos + 12 * i) for i in range(vlen))
            pos += fixed + per_entry * vlen
            self.types[type_id] = (kind, name_off, size_or_type, members, kind_flag)
            self.last_id = type_id
            type_id += 1

    def name(self, offset):
        """The string at ``offset`` of the (possibly split) string section."""
        if offset < self._str_base:
            return self.base.name(offset)
        start = offset - self._str_base
        return self.strings[start : self.strings.index(b"\0", start)].decode()

    def type(self, type_id):
        """The raw type tuple of ``type_id``, looking into the base BTF when needed."""
        if type_id < self.first_id:
            return self.base.type(type_id)
        return self.types[type_id]

    def find_struct(self, name):
        """The id of the struct called ``name`` (this BTF first, then the base), or None."""
        for type_id, (kind, name_off, _s, _m, _f) in self.types.items():
            if kind == _KIND_STRUCT and name_off and self.name(name_off) == name:
                return type_id
        return self.base.find_struct(name) if self.base else None

    def member_offset(self, struct_name, path):
        """Return (byte offset, member name) of ``path`` ("bus.offset") in ``struct_name``.

        A path element may list alternatives, "size|num_pages": the first member present
        wins, and its name is returned so the caller knows the unit. None when not found.
        """
        type_id = self.find_struct(struct_name)
        if type_id is None:
            return None
        offset, found_name = 0, None
        for element in path.split("."):
            kind, _n, _s, members, kind_flag = self._strip(type_id)
            if kind not in (_KIND_STRUCT, _KIND_UNION):
                return None
            by_name = {self.name(m[0]): m for m in members if m[0]}
            found_name = next((alt for alt in element.split("|") if alt in by_name), None)
            if found_name is None:
                return None
            _name_off, member_type, bit_offset = by_name[found_name]
            offset += (bit_offset & 0xFFFFFF if kind_flag else bit_offset) // 8
            type_id = member_type
        return offset, found_name

    def _strip(self, type_id):
        entry = self.type(type_id)
        while entry[0] in _QUALIFIERS:
            entry = self.type(entry[2])
        return entry


def load_vmlinux_btf(btf_dir=BTF_DIR):
    """The running kernel's vmlinux BTF; FeatureMissing when the kernel has none."""
    try:
        with open(os.path.join(btf_dir, "vmlinux"), "rb") as src:
            return Btf(src.read())
    except FileNotFoundError:
        raise FeatureMissing(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux)",
            "memtrace uses the built-in offsets of Debian 6.1/6.12",
        ) from None


def load_module_btf(module, base, btf_dir=BTF_DIR, module_file_bytes=None):
    """The split BTF of ``module``: from sysfs when loaded, else from ``module_file_bytes``
    (the raw .BTF section of its file). None when neither has it."""
    path = os.path.join(btf_dir, module)
    if os.path.exists(path):
        with open(path, "rb") as src:
            return Btf(src.read(), base)
    if module_file_bytes:
        return Btf(module_file_bytes, base)
    return None

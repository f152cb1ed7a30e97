"""What memtrace reads at each probed symbol: the argument decoding, per symbol.

targets.py says *which* symbol stands for a function on the running kernel; this table says
what to fetch there, in one backend-neutral form that the bcc and tracefs backends both
compile. Struct offsets that differ between kernels (``ttm_resource.num_pages`` before 6.2,
``size`` after) are named by field path and resolved from BTF at run time (probes/btf.py),
with the offsets of Debian's 6.1/6.12 builds as the fallback.
"""

import dataclasses
from typing import Optional, Tuple

from memtrace.analysis import events

# x86-64 SysV argument registers, in the spelling kprobe_events uses.
ARG_REGISTERS = ("di", "si", "dx", "cx", "r8", "r9")
PAGE_SIZE = 4096
# The fetch types both backends read: bytes each, and whether the value is signed.
KIND_BYTES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "x64": 8, "s32": 4}
SIGNED_KINDS = frozenset({"s32"})
# arch_phys_wc_add returns an MTRR register plus this (MTRR_TO_PHYS_WC_OFFSET, mtrr.c).
PHYS_WC_HANDLE_OFFSET = 1000


@dataclasses.dataclass(frozen=True)
class Fetch:
    """One value read at function entry: argument ``arg`` (1-based), optionally
    dereferenced at ``field`` of the struct it points to.

    ``kind`` is the C type read: u8, u32, s32, u64 or x64 (an address). ``field`` is a
    (struct name, member path) pair resolved through BTF, e.g. ("ttm_resource", "size").

    Names mean something to the decoder (probes/decode.py): ``start``/``end``/``size`` are
    bytes, ``pfn`` a page frame number and ``pages`` a length in pages, ``requested`` and
    ``granted`` an ``enum page_cache_mode``, ``mtrr_type`` an MTRR type number, ``reg`` an
    MTRR register (negative: none named), ``handle`` an arch_phys_wc_add handle.
    """

    name: str
    arg: int
    kind: str = "x64"
    field: Optional[Tuple[str, str]] = None


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """How to trace one symbol.

    ``requested``: the memory type the function asks for when fixed by its name (ioremap_wc
    asks WC), else None. ``granted_via_arg``: an ``enum page_cache_mode *`` argument the
    function writes the granted type into; it is read again at return. ``returns``: how to
    read the return value ("s32", "x64" for pointers, None for void). ``stack``: capture a
    kernel stack (reservations and mappings: who asked). ``mtrr_type``: the MTRR type the
    function asks for when fixed by its name (arch_phys_wc_add asks WC). ``ret_mtrr``: what
    the return value says about MTRRs: "reg" (the register, or -errno) or "handle"
    (arch_phys_wc_add's register + 1000; 0 when PAT made an MTRR unnecessary; or -errno).
    """

    symbol: str
    role: str
    fetch: Tuple[Fetch, ...] = ()
    requested: Optional[str] = None
    granted_via_arg: Optional[int] = None
    returns: Optional[str] = "s32"
    stack: bool = False
    mtrr_type: Optional[str] = None
    ret_mtrr: Optional[str] = None


_PHYS_RANGE = (Fetch("start", 1), Fetch("end", 2))
_PHYS_SIZE = (Fetch("start", 1), Fetch("size", 2))
# ttm_resource: bytes (>= 6.2: size) or pages (<= 6.1: num_pages) at the same offset.
_RESOURCE_SIZE = ("ttm_resource", "size|num_pages")


def _ioremap(symbol, requested):
    return ProbeSpec(
        symbol, events.ROLE_IOREMAP, _PHYS_SIZE, requested=requested, returns="x64", stack=True
    )


SPECS = {
    spec.symbol: spec
    for spec in (
        ProbeSpec(
            "memtype_reserve",
            events.ROLE_RESERVE,
            _PHYS_RANGE + (Fetch("requested", 3, "u32"),),
            granted_via_arg=4,
            stack=True,
        ),
        ProbeSpec(
            "reserve_memtype",
            events.ROLE_RESERVE,
            _PHYS_RANGE + (Fetch("requested", 3, "u32"),),
            granted_via_arg=4,
            stack=True,
        ),
        ProbeSpec("memtype_free", events.ROLE_FREE, _PHYS_RANGE, stack=True),
        ProbeSpec("free_memtype", events.ROLE_FREE, _PHYS_RANGE, stack=True),
        # Called after the downgrade decision with the granted type: the answer on kernels
        # whose return probes cannot read arguments (before 6.9).
        ProbeSpec(
            "memtype_kernel_map_sync",
            events.ROLE_MAP_SYNC,
            _PHYS_SIZE + (Fetch("granted", 3, "u32"),),
        ),
        ProbeSpec(
            "kernel_map_sync_memtype",
            events.ROLE_MAP_SYNC,
            _PHYS_SIZE + (Fetch("granted", 3, "u32"),),
        ),
        _ioremap("ioremap", "UC-"),
        _ioremap("ioremap_uc", "UC"),
        _ioremap("ioremap_wc", "WC"),
        _ioremap("ioremap_wt", "WT"),
        _ioremap("ioremap_cache", "WB"),
        _ioremap("ioremap_encrypted", "WB"),
        _ioremap("ioremap_prot", None),
        ProbeSpec("iounmap", events.ROLE_IOUNMAP, (Fetch("addr", 1),), returns=None),
        ProbeSpec(
            "arch_io_reserve_memtype_wc",
            events.ROLE_RESERVE,
            _PHYS_SIZE,
            requested="WC",
            stack=True,
        ),
        # track_pfn_remap(vma, pgprot_t *prot, pfn, addr, size): a user mapping of PFNs.
        ProbeSpec(
            "track_pfn_remap", events.ROLE_USER_MAP, (Fetch("pfn", 3), Fetch("size", 5)), stack=True
        ),
        # pfnmap_track(pfn, size, pgprot_t *prot): its successor.
        ProbeSpec(
            "pfnmap_track", events.ROLE_USER_MAP, (Fetch("pfn", 1), Fetch("size", 2)), stack=True
        ),
        ProbeSpec("reserve_pfn_range", events.ROLE_USER_MAP, _PHYS_SIZE, stack=True),
        # mtrr_add_page(unsigned long base /* pfn */, unsigned long size /* pages */,
        #               unsigned int type, bool increment): the register, or -errno.
        ProbeSpec(
            "mtrr_add_page",
            events.ROLE_MTRR_ADD,
            (Fetch("pfn", 1), Fetch("pages", 2), Fetch("mtrr_type", 3, "u32")),
            stack=True,
            ret_mtrr="reg",
        ),
        # mtrr_del_page(int reg, unsigned long base /* pfn */, unsigned long size /* pages */):
        # base and size name the range only when reg < 0. Returns the register, or -errno.
        ProbeSpec(
            "mtrr_del_page",
            events.ROLE_MTRR_DEL,
            (Fetch("reg", 1, "s32"), Fetch("pfn", 2), Fetch("pages", 3)),
            stack=True,
            ret_mtrr="reg",
        ),
        # arch_phys_wc_add(unsigned long base, unsigned long size), both in bytes.
        ProbeSpec(
            "arch_phys_wc_add",
            events.ROLE_PHYS_WC,
            _PHYS_SIZE,
            stack=True,
            mtrr_type="WC",
            ret_mtrr="handle",
        ),
        # void arch_phys_wc_del(int handle)
        ProbeSpec(
            "arch_phys_wc_del",
            events.ROLE_PHYS_WC,
            (Fetch("handle", 1, "s32"),),
            returns=None,
            stack=True,
            mtrr_type="WC",
        ),
        ProbeSpec(
            "ttm_move_memcpy",
            events.ROLE_MOVE,
            (Fetch("clear", 1, "u8"), Fetch("num_pages", 2, "u32")),
            returns=None,
        ),
        ProbeSpec(
            "ttm_bo_move_memcpy",
            events.ROLE_MOVE,
            (Fetch("resource_size", 3, "u64", _RESOURCE_SIZE),),
        ),
        ProbeSpec(
            "drm_gem_vram_bo_driver_move",
            events.ROLE_MOVE,
            (Fetch("resource_size", 4, "u64", _RESOURCE_SIZE),),
        ),
        ProbeSpec(
            "bo_driver_move", events.ROLE_MOVE, (Fetch("resource_size", 4, "u64", _RESOURCE_SIZE),)
        ),
        # bus.offset and bus.caching are filled in only inside this function (by
        # ttm_mem_io_reserve), so entry cannot read them; the ioremap_wc it makes carries the
        # range and the type. This probe times the mapping and marks who asked.
        ProbeSpec(
            "ttm_kmap_iter_linear_io_init",
            events.ROLE_TIMED,
            (Fetch("resource_size", 3, "u64", _RESOURCE_SIZE),),
            returns="x64",
        ),
    )
}

# Offsets in Debian's 6.1 and 6.12 builds (identical there), used when BTF cannot answer.
FALLBACK_OFFSETS = {
    ("ttm_resource", "size|num_pages"): 8,
}


def spec_for(symbol):
    """Return the ProbeSpec of ``symbol``, or a timing-only spec for any other function."""
    return SPECS.get(symbol) or ProbeSpec(symbol, events.ROLE_TIMED)


def fetch_register(fetch):
    """The kprobe_events register name of ``fetch``'s argument, e.g. 'di' for arg 1."""
    return ARG_REGISTERS[fetch.arg - 1]

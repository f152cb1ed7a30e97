"""Builders of the events, streams and traces the tests share.

``call``, ``reserve``, ``free`` and ``move`` make single events; ``bochs_move``,
``seed_events``, ``bochs_events`` and ``qxl_events`` make the streams of the scenarios the
analysis, CLI and report tests run on (modeled on lab guests; see each docstring);
``write_trace`` writes a stream as `memtrace record` would.
"""

from memtrace.analysis import events as ev
from memtrace.analysis.events import Event
from memtrace.tracefile import TraceWriter

# -- single events (the reservation model's tests) -------------------------------------------

BAR0 = (0xFD000000, 0xFE000000)
TTM_BO = (0xFD000000, 0xFD3E8000)
REGS = (0xFEBF0000, 0xFEBF1000)

TAIL = [
    "local_pci_probe",
    "pci_device_probe",
    "really_probe",
    "__driver_probe_device",
    "driver_probe_device",
    "__driver_attach",
    "bus_for_each_dev",
    "bus_add_driver",
    "driver_register",
    "do_one_initcall",
    "do_init_module",
    "__do_sys_finit_module",
    "do_syscall_64",
    "entry_SYSCALL_64_after_hwframe",
]
BOCHS_STACK = ["memtype_reserve", "__ioremap_caller", "bochs_pci_probe [bochs]"] + TAIL
TTM_STACK = [
    "memtype_reserve",
    "__ioremap_caller",
    "ttm_kmap_iter_linear_io_init [ttm]",
    "ttm_bo_move_memcpy [ttm]",
    "ttm_bo_handle_move_mem [ttm]",
    "ttm_bo_validate [ttm]",
    "drm_gem_vram_pin [drm_vram_helper]",
    "drm_client_register [drm]",
    "bochs_pci_probe.cold [bochs]",
] + TAIL
VMAP_STACK = [
    "memtype_reserve",
    "__ioremap_caller",
    "ttm_bo_vmap [ttm]",
    "drm_gem_vram_vmap [drm_vram_helper]",
    "drm_gem_vmap [drm]",
    "drm_client_buffer_vmap [drm]",
    "drm_fb_helper_damage_work [drm_kms_helper]",
    "process_one_work",
    "worker_thread",
    "kthread",
    "ret_from_fork",
]
MMAP_STACK = [
    "memtype_reserve",
    "reserve_pfn_range",
    "track_pfn_remap",
    "remap_pfn_range",
    "kernfs_fop_mmap",
    "__mmap_region",
    "mmap_region",
    "do_mmap",
    "vm_mmap_pgoff",
    "ksys_mmap_pgoff",
    "do_syscall_64",
    "entry_SYSCALL_64_after_hwframe",
]
STRICT_STACK = ["memtype_reserve", "set_memory_wc", "some_driver_init [some]"]


def call(ts, fn, role, comm="modprobe", pid=175, **fields):
    """One event; ``probe`` defaults to ``fn``, the thread to the process."""
    fields.setdefault("probe", fn)
    fields.setdefault("tid", pid)
    return Event(ts_ns=ts, fn=fn, role=role, comm=comm, pid=pid, **fields)


def reserve(ts, span, requested, granted="same", stack=BOCHS_STACK, ret=0, **fields):
    """A memtype_reserve call of ``span`` = (start, end); ``granted`` defaults to requested."""
    granted = requested if granted == "same" else granted
    return call(
        ts,
        "memtype_reserve",
        ev.ROLE_RESERVE,
        start=span[0],
        end=span[1],
        size=span[1] - span[0],
        requested=requested,
        granted=granted,
        granted_from="return" if granted else None,
        ret=ret,
        duration_ns=20_000,
        stack=list(stack),
        **fields,
    )


def free(ts, span, ret=0, **fields):
    """A memtype_free call of ``span``."""
    return call(
        ts,
        "memtype_free",
        ev.ROLE_FREE,
        start=span[0],
        end=span[1],
        size=span[1] - span[0],
        ret=ret,
        duration_ns=10_000,
        stack=["memtype_free", "iounmap"],
        **fields,
    )


# -- moves ----------------------------------------------------------------------------------

FB_BYTES = 0x3E8000  # 1000 pages, the bochs framebuffer BO of the seed


def move(ts, fn, duration=None, nbytes=FB_BYTES, **fields):
    """A move call; ``probe`` as the default plan names it."""
    probes = {"drm_gem_vram_bo_driver_move": "drm_vram_helper:bo_driver_move"}
    fields.setdefault("probe", probes.get(fn, f"ttm:{fn}"))
    return call(ts, fn, ev.ROLE_MOVE, bytes=nbytes, duration_ns=duration, **fields)


def bochs_move(t0, granted="UC-", pid=175, cycles=None):
    """One framebuffer move as 6.1 shows it: bo_driver_move > ttm_bo_move_memcpy > the WC
    ioremap of the BO (granted ``granted``) > ttm_move_memcpy > iounmap."""
    return [
        move(t0, "drm_gem_vram_bo_driver_move", 8_260_000, pid=pid, cycles=cycles),
        move(t0 + 100_000, "ttm_bo_move_memcpy", 8_100_000, pid=pid),
        reserve(t0 + 280_000, TTM_BO, "WC", granted, TTM_STACK, pid=pid),
        move(t0 + 731_000, "ttm_move_memcpy", 6_300_000, pid=pid),
        free(t0 + 7_900_000, TTM_BO, pid=pid),
    ]


# -- the seed: a slow move on UC- against a write-combined one -------------------------------

UC_NS, UC_CYCLES = 1_240_000_000, 2_227_400_000
WC_NS, WC_CYCLES = 10_000_000, 17_800_000
# The write-combined move maps a BO of a second card's VRAM that nothing reserved uncached.
WC_VRAM = (0xF4000000, 0xF8000000)
WC_BO = (0xF4000000, 0xF4000000 + FB_BYTES)
T_UC, T_WC = 10_689_092_000, 12_000_000_000


def seed_move(t0, span, requested, granted, duration, cycles, pid=175):
    """One framebuffer move as the bcc backend records it: bo_driver_move > ttm_bo_move_memcpy
    > the ioremap_wc reservation of the BO (granted ``granted``) > ttm_move_memcpy > iounmap."""
    return [
        move(
            t0, "drm_gem_vram_bo_driver_move", duration, pid=pid, cycles=cycles, cycles_source="tsc"
        ),
        move(t0 + 100_000, "ttm_bo_move_memcpy", duration - 160_000, pid=pid),
        reserve(t0 + 280_000, span, requested, granted, TTM_STACK, pid=pid),
        move(t0 + 731_000, "ttm_move_memcpy", duration - 1_960_000, pid=pid),
        free(t0 + duration - 360_000, span, pid=pid),
    ]


def seed_events(uc=True, wc=True):
    """bochs reserves its whole framebuffer BAR UC- at probe time; ``uc``: a move then maps
    a BO of it asking WC, gets UC- and takes 1.24 s; ``wc``: a move through a WC mapping of
    another card's VRAM takes 0.01 s."""
    events = [reserve(T_UC - 200_000_000, BAR0, "UC-", stack=BOCHS_STACK)]
    if uc:
        events += seed_move(T_UC, TTM_BO, "WC", "UC-", UC_NS, UC_CYCLES)
    if wc:
        events += [
            reserve(
                T_WC - 100_000_000,
                WC_VRAM,
                "WC",
                stack=[
                    "memtype_reserve",
                    "__ioremap_caller",
                    "ioremap_wc",
                    "qxl_device_init [qxl]",
                ],
            )
        ]
        events += seed_move(T_WC, WC_BO, "WC", "WC", WC_NS, WC_CYCLES)
    return events


# -- modprobe bochs and qxl -----------------------------------------------------------------

T0 = 10_477_701_000
KWORKER = {"comm": "kworker/0:1", "pid": 17}
QXL_VRAM = (0xF4000000, 0xF8000000)
QXL_RAM_HEADER = (0xF7FFE000, 0xF8000000)


def ioremap(ts, fn, span, requested, ret=0xFFFFB5F1C0000000, stack=None, **fields):
    """An ioremap-family call (role ioremap) returning ``ret`` (0: NULL)."""
    caller = (stack or ["bochs_pci_probe [bochs]"])[0]
    return call(
        ts,
        fn,
        ev.ROLE_IOREMAP,
        start=span[0],
        end=span[1],
        size=span[1] - span[0],
        requested=requested,
        ret=ret,
        vaddr=ret or None,
        duration_ns=300_000,
        caller=caller,
        stack=[fn] + (stack or ["bochs_pci_probe [bochs]"]),
        **fields,
    )


def kmap_iter(ts, ret):
    """ttm_kmap_iter_linear_io_init as the first probe table decoded it (role ioremap): the
    resource's bus fields are not filled in yet at entry, so its range and type are
    meaningless, and its -EINVAL (not iomem) is an ordinary answer, not a refusal."""
    return call(
        ts,
        "ttm_kmap_iter_linear_io_init",
        ev.ROLE_IOREMAP,
        probe="ttm:ttm_kmap_iter_linear_io_init",
        start=0,
        end=FB_BYTES,
        size=FB_BYTES,
        requested="WB",
        ret=ret,
        duration_ns=200_000,
        stack=["ttm_kmap_iter_linear_io_init [ttm]", "ttm_bo_move_memcpy [ttm]"],
    )


def bochs_events(fixed=False):
    """``modprobe bochs`` then the kworker's vmap; ``fixed``: bochs maps the framebuffer
    with ioremap_wc (upstream 9388ccf69925), so every WC request gets WC."""
    bar_type = "WC" if fixed else "UC-"
    t_move = T0 + 211_391_000
    events = [
        ioremap(T0, "ioremap", REGS, "UC-"),
        reserve(T0 + 10_000, REGS, "UC-"),
        ioremap(T0 + 2_237_000, "ioremap_wc" if fixed else "ioremap", BAR0, bar_type),
        reserve(T0 + 2_240_000, BAR0, bar_type),
        kmap_iter(t_move + 150_000, 0xFFFF8C1401963200),
        ioremap(
            t_move + 250_000,
            "ioremap_wc",
            TTM_BO,
            "WC",
            stack=["ttm_kmap_iter_linear_io_init [ttm]", "ttm_bo_move_memcpy [ttm]"],
        ),
        kmap_iter(t_move + 600_000, -22 & 0xFFFFFFFFFFFFFFFF),
    ]
    events += bochs_move(t_move, granted="WC" if fixed else "UC-")
    t_vmap = T0 + 225_231_000
    events += [
        ioremap(
            t_vmap - 100_000, "ioremap_wc", TTM_BO, "WC", stack=["ttm_bo_vmap [ttm]"], **KWORKER
        ),
        reserve(t_vmap, TTM_BO, "WC", "WC" if fixed else "UC-", VMAP_STACK, **KWORKER),
    ]
    return events


def qxl_events():
    """qxl: VRAM mapped WC (io_mapping_create_wc -> ioremap_wc), then its RAM header
    ioremap'ed UC- inside it (granted WC), then a WC move: nothing to report."""
    qxl = ["qxl_device_init [qxl]", "qxl_pci_probe [qxl]"]
    return [
        reserve(
            1_000, QXL_VRAM, "WC", stack=["memtype_reserve", "__ioremap_caller", "ioremap_wc"] + qxl
        ),
        reserve(
            2_000,
            QXL_RAM_HEADER,
            "UC-",
            "WC",
            ["memtype_reserve", "__ioremap_caller", "ioremap"] + qxl,
        ),
        reserve(3_000, REGS, "UC-"),
        reserve(4_000, (0xF4000000, 0xF4400000), "WC", stack=TTM_STACK),
        call(
            3_900,
            "ttm_bo_move_memcpy",
            ev.ROLE_MOVE,
            probe="ttm:ttm_bo_move_memcpy",
            bytes=0x400000,
            duration_ns=900_000,
        ),
    ]


# -- traces ----------------------------------------------------------------------------------


def write_trace(path, events, header, lost=0, footer=None):
    """Write ``events`` as `memtrace record` would, under ``header``; the footer says ``lost``
    events were lost in a 3.5 s run the workload stopped, with ``footer``'s fields on top.
    Returns the path as a string."""
    with open(path, "wb") as stream:
        writer = TraceWriter(stream, header)
        for event in events:
            writer.event(event)
        writer.footer(
            {
                "lost_events": lost,
                "missed_returns": 0,
                "seconds": 3.5,
                "stopped_by": "workload",
                **(footer or {}),
            }
        )
    return str(path)


# -- raw trace records, for tests of the reader's checks ---------------------------------------

# The smallest header and event the reader accepts, as dicts to be spoiled one field at a time.
RAW_HEADER = {
    "type": "header",
    "format": "memtrace-trace",
    "version": 1,
    "kernel": "6.12",
    "pat_snapshot": [],
}
RAW_WC_RESERVE = {
    "type": "event",
    "ts_ns": 1,
    "fn": "memtype_reserve",
    "role": "reserve",
    "start": "0xfd000000",
    "end": "0xfd3e8000",
    "requested": "WC",
    "granted": "UC-",
}

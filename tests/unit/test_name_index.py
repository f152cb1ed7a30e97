"""The closest names to a misspelt function, over a kernel-sized list of names."""

import difflib
import random

import pytest

from memtrace.analysis.name_index import _RANK_ALL_BELOW, NameIndex, closest_by_tiers
from memtrace.errors import NotTraceable
from memtrace.probes.kallsyms import parse_kallsyms
from memtrace.probes.targets import SymbolSource, resolve

# The names a user means, with the neighbours a real kernel has next to them.
REAL = (
    "memtype_reserve",
    "memtype_reserve_io",
    "memtype_free",
    "memtype_free_io",
    "memtype_kernel_map_sync",
    "ioremap",
    "ioremap_wc",
    "ioremap_uc",
    "ioremap_wt",
    "ioremap_cache",
    "ioremap_prot",
    "iounmap",
    "remap_pfn_range",
    "remap_pfn_range_notrack",
    "pfnmap_track",
    "pfnmap_untrack",
    "ttm_move_memcpy",
    "ttm_bo_move_memcpy",
    "ttm_bo_move_accel_cleanup",
    "drm_gem_vram_bo_driver_move",
    "drm_gem_vram_driver_dumb_create",
    "drm_gem_vram_bo_driver_move_notify",
    "arch_phys_wc_add",
    "arch_phys_wc_del",
    "mtrr_add_page",
    "mtrr_del_page",
)
_PREFIXES = (
    "drm",
    "ttm",
    "pci",
    "acpi",
    "ext4",
    "xfs",
    "nvme",
    "usb",
    "snd",
    "net",
    "tcp",
    "mm",
    "kvm",
    "x86",
    "blk",
    "scsi",
    "virtio",
    "i915",
    "amdgpu",
    "btrfs",
    "sched",
)
_PARTS = (
    "gem",
    "bo",
    "dev",
    "queue",
    "page",
    "map",
    "buf",
    "ctx",
    "irq",
    "dma",
    "vram",
    "fence",
    "reg",
    "sync",
    "node",
    "list",
    "cache",
    "range",
    "res",
    "mem",
    "io",
    "work",
    "timer",
)
_VERBS = (
    "init",
    "exit",
    "alloc",
    "free",
    "get",
    "put",
    "add",
    "del",
    "move",
    "copy",
    "read",
    "write",
    "create",
    "destroy",
    "lookup",
    "attach",
    "detach",
    "reserve",
    "release",
)
_SUFFIXES = ("", "", "", "", ".cold", ".isra.0", ".constprop.0", "_locked", "_notify")


def kernel_names(count=100_000, seed=11):
    """``count`` distinct kallsyms-shaped function names (subsystem_part_verb[.clone]), the
    REAL ones among them, reproducible from ``seed``."""
    rng = random.Random(seed)
    names = set(REAL)
    while len(names) < count:
        words = [rng.choice(_PREFIXES)]
        words += rng.sample(_PARTS, rng.randint(1, 3))
        words.append(rng.choice(_VERBS))
        names.add("_".join(words) + rng.choice(_SUFFIXES))
    return sorted(names)


@pytest.fixture(scope="module")
def index():
    return NameIndex(kernel_names())


@pytest.mark.parametrize(
    "typed, meant",
    [
        ("drm_gem_vram_bo_drver_move", "drm_gem_vram_bo_driver_move"),
        ("memtype_reserv", "memtype_reserve"),
        ("memtype_resrve", "memtype_reserve"),
        ("ioremap_wcc", "ioremap_wc"),
        ("ttm_move_memcopy", "ttm_move_memcpy"),
        ("remap_pfn_ranges", "remap_pfn_range"),
        ("arch_phys_wc_dell", "arch_phys_wc_del"),
    ],
)
def test_a_misspelt_name_suggests_the_meant_one_first(index, typed, meant):
    assert index.closest(typed, n=3)[0] == meant


def test_the_suggestions_are_the_ones_difflib_gives_over_every_name(index):
    every = index.names
    for typed in ("drm_gem_vram_bo_drver_move",):
        expected = difflib.get_close_matches(typed, every, n=3, cutoff=0.6)
        assert set(index.closest(typed, n=3, cutoff=0.6)) == set(expected), typed


def test_the_closest_come_best_first_above_the_cutoff(index):
    ranked = index.ranked("memtype_reserv", cutoff=0.8)
    assert ranked[0] == (pytest.approx(28 / 29), "memtype_reserve")
    assert all(ratio >= 0.8 for ratio, _ in ranked)
    assert [r for r, _ in ranked] == sorted((r for r, _ in ranked), reverse=True)


def test_near_misses_hide_the_looser_matches():
    ranked = NameIndex(["ioremap_wc", "ioremap_uc", "iounmap"]).ranked("ioremap_wcc", 0.45)
    assert closest_by_tiers(ranked, (0.9, 0.6)) == ["ioremap_wc"]
    assert closest_by_tiers(ranked, (0.99, 0.45)) == ["ioremap_wc", "ioremap_uc", "iounmap"]
    assert closest_by_tiers(ranked, (0.99,)) == []


def test_a_word_sharing_nothing_with_any_name_gets_nothing(index):
    assert index.closest("QQQQ", n=3) == []


def test_a_small_pool_is_ranked_whole():
    assert NameIndex(["ioremap", "memtype_reserve"]).closest("xyz", n=1) != []


def test_resolve_names_the_closest_kernel_functions_of_a_kernel_sized_kallsyms():
    text = "".join(
        f"ffffffff{0x81000000 + i * 16:08x} t {name}\n" for i, name in enumerate(kernel_names())
    )
    source = SymbolSource(parse_kallsyms(text))
    with pytest.raises(NotTraceable) as caught:
        resolve("drm_gem_vram_bo_drver_move", source)
    assert caught.value.hint.startswith("closest names: drm_gem_vram_bo_driver_move, ")


def test_names_starting_with_the_skipped_prefix_are_left_out():
    names = {"ioremap", "__pfx_ioremap", "ioremap_wc", "__pfx_ioremap_wc", "", "a\nb"}
    index = NameIndex(names, skip_prefix="__pfx_")
    assert sorted(index.names) == ["ioremap", "ioremap_wc"]
    assert index.closest("__pfx_ioremap", n=3) == ["ioremap", "ioremap_wc"]


def test_the_answer_does_not_depend_on_the_order_of_the_names():
    names = kernel_names(20_000, seed=5)
    orders = (names, list(reversed(names)), set(names), frozenset(names))
    for typed in ("drm_gem_vram_bo_drver_move", "memtype_resrve", "ttm_move_memcopy"):
        answers = {tuple(NameIndex(order).candidates(typed, limit=40)) for order in orders}
        assert len(answers) == 1, typed


def test_candidates_tied_on_shared_trigrams_come_in_name_order():
    index = NameIndex(["abd", "abc", "abe"] + [f"zz{i}" for i in range(_RANK_ALL_BELOW)])
    assert index.candidates("abx", limit=3) == ["abc", "abd", "abe"]

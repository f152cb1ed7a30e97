"""The target table and ``resolve``: which symbol memtrace probes for a name, and why."""

import os

import pytest

from memtrace.errors import NotTraceable
from memtrace.probes import targets
from memtrace.probes.kallsyms import parse_kallsyms, read_kallsyms
from memtrace.probes.kmod_symbols import ModuleFiles
from memtrace.probes.plan import expand_requests
from memtrace.probes.targets import (
    ALTERNATIVE,
    EXACT,
    FREE,
    INLINED,
    IOREMAP,
    MAPPING,
    MOVER,
    MTRR,
    RESERVE,
    TARGETS,
    SymbolSource,
    find_target,
    resolve,
    split_request,
)
from tests.lab_kernels import lab_release_params

HOST_KALLSYMS = os.path.join(
    os.path.dirname(__file__), "..", "fixtures", "host-6.18", "proc", "kallsyms"
)
DEBIAN_RELEASES = lab_release_params()

# Names and types as a pre-5.6 kernel (4.19-era) lists them.
OLD_KERNEL = parse_kallsyms(
    "ffffffff81060000 T reserve_memtype\n"
    "ffffffff81060100 T free_memtype\n"
    "ffffffff81060200 T kernel_map_sync_memtype\n"
    "ffffffff81060300 t reserve_pfn_range\n"
    "ffffffff81060400 T track_pfn_remap\n"
)


@pytest.fixture(scope="module")
def host_kallsyms():
    return read_kallsyms(HOST_KALLSYMS)


@pytest.fixture
def host(host_kallsyms, tmp_path):
    """The 6.18 host: its kallsyms, and no module files at all (no /lib/modules/<release>)."""
    return SymbolSource(host_kallsyms, ModuleFiles("6.18.44-fc-v669", str(tmp_path)))


def debian_modules(release):
    files = ModuleFiles(release)
    if not files.available:
        pytest.skip(f"/lib/modules/{release} not installed (the set-up script adds it)")
    return files


def test_table_covers_every_role_and_names_each_target_once():
    names = [t.name for t in TARGETS]
    assert len(names) == len(set(names))
    assert {t.role for t in TARGETS} == {RESERVE, FREE, IOREMAP, MOVER, MAPPING, MTRR}
    for target in TARGETS:
        assert target.candidates, target.name
        assert target.name in target.symbols or target.inlined_into, target.name


def test_module_targets_name_their_module():
    modules = {t.name: t.module for t in TARGETS if t.module}
    assert modules == {
        "ttm_move_memcpy": "ttm",
        "ttm_bo_move_memcpy": "ttm",
        "ttm_kmap_iter_linear_io_init": "ttm",
        "drm_gem_vram_bo_driver_move": "drm_vram_helper",
    }


def test_old_names_find_their_target():
    assert find_target("reserve_memtype").name == "memtype_reserve"
    assert find_target("pfnmap_track").name == "track_pfn_remap"
    assert find_target("drm_gem_vram_bo_driver_move", "drm_vram_helper") is not None
    assert find_target("drm_gem_vram_bo_driver_move", "ttm") is None
    assert find_target("vfs_read") is None


@pytest.mark.parametrize(
    "request_text, expected",
    [
        ("memtype_reserve", (None, "memtype_reserve")),
        ("ttm:ttm_move_memcpy", ("ttm", "ttm_move_memcpy")),
    ],
)
def test_split_request(request_text, expected):
    assert split_request(request_text) == expected


@pytest.mark.parametrize("bad", ["", "a:b:c", "ttm:", ":x", "1abc", "foo bar"])
def test_split_request_rejects_what_is_no_function_name(bad):
    with pytest.raises(NotTraceable, match="not a function name"):
        split_request(bad)


def test_host_memtype_reserve_is_probed_as_itself(host):
    resolution = resolve("memtype_reserve", host)
    assert (resolution.symbol, resolution.module, resolution.how) == (
        "memtype_reserve",
        None,
        EXACT,
    )
    assert resolution.loaded and resolution.probe_name == "memtype_reserve"
    assert resolution.in_filter_functions is None  # list unreadable: unknown, not False


def test_pre_5_6_name_resolves_to_the_new_one(host):
    resolution = resolve("reserve_memtype", host)
    assert resolution.symbol == "memtype_reserve"
    assert resolution.how == ALTERNATIVE
    assert "v5.6" in resolution.explanation and "ecdd6ee77b73" in resolution.explanation


def test_old_kernel_gets_the_old_names():
    old = SymbolSource(OLD_KERNEL)
    for requested, probed in [
        ("memtype_reserve", "reserve_memtype"),
        ("memtype_free", "free_memtype"),
        ("memtype_kernel_map_sync", "kernel_map_sync_memtype"),
        ("track_pfn_remap", "track_pfn_remap"),
        ("reserve_pfn_range", "reserve_pfn_range"),
    ]:
        assert resolve(requested, old).symbol == probed


def test_track_pfn_remap_becomes_pfnmap_track_on_6_18(host):
    resolution = resolve("track_pfn_remap", host)
    assert (resolution.symbol, resolution.how) == ("pfnmap_track", ALTERNATIVE)
    assert "pfn" in resolution.explanation


def test_inlined_reserve_pfn_range_is_probed_in_its_only_caller(host):
    resolution = resolve("reserve_pfn_range", host)
    assert (resolution.symbol, resolution.how) == ("pfnmap_track", INLINED)
    assert "only" in resolution.explanation


def test_isra_only_function_is_refused(host):
    with pytest.raises(NotTraceable) as caught:
        resolve("__ioremap_caller", host)
    assert "__ioremap_caller.isra.0" in caught.value.message
    assert "argument" in caught.value.message
    assert ".cold" not in caught.value.message


def test_misspelled_name_suggests_the_closest(host):
    with pytest.raises(NotTraceable) as caught:
        resolve("memtype_reserv", host)
    assert "memtype_reserve" in caught.value.hint


def test_module_target_on_a_kernel_without_module_files(host):
    with pytest.raises(NotTraceable, match="ttm is not loaded") as caught:
        resolve("ttm_move_memcpy", host)
    assert "memtrace lab" in caught.value.hint


def test_loaded_module_function_is_probed_by_mod_sym():
    source = SymbolSource(
        parse_kallsyms(
            "ffffffffc0a01230 t bo_driver_move\t[drm_vram_helper]\n"
            "ffffffffc0b00000 T ttm_move_memcpy\t[ttm]\n"
        )
    )
    moved = resolve("drm_gem_vram_bo_driver_move", source)
    assert (moved.probe_name, moved.how, moved.loaded) == (
        "drm_vram_helper:bo_driver_move",
        INLINED,
        True,
    )
    assert "inlines it" in moved.explanation
    assert resolve("ttm:ttm_move_memcpy", source).probe_name == "ttm:ttm_move_memcpy"


def test_loaded_module_without_the_function():
    source = SymbolSource(parse_kallsyms("ffffffffc0b00000 T ttm_bo_move_memcpy\t[ttm]\n"))
    with pytest.raises(NotTraceable, match="ttm is loaded but has no function ttm_move_memcpy"):
        resolve("ttm_move_memcpy", source)


def test_static_name_in_two_modules_must_be_qualified():
    source = SymbolSource(
        parse_kallsyms(
            "ffffffffc0a00000 t bo_driver_move\t[drm_vram_helper]\n"
            "ffffffffc0c00000 t bo_driver_move\t[other]\n"
        )
    )
    with pytest.raises(NotTraceable, match="several modules") as caught:
        resolve("bo_driver_move", source)
    assert "drm_vram_helper:bo_driver_move" in caught.value.hint


def test_blacklisted_function_is_refused(host_kallsyms):
    source = SymbolSource(host_kallsyms, kprobe_blacklist=frozenset({"memtype_reserve"}))
    with pytest.raises(NotTraceable, match="blacklist"):
        resolve("memtype_reserve", source)


def test_filter_function_membership_is_noted(host_kallsyms):
    source = SymbolSource(host_kallsyms, filter_functions=frozenset({("memtype_reserve", None)}))
    assert resolve("memtype_reserve", source).in_filter_functions is True
    assert resolve("ioremap", source).in_filter_functions is False


def test_built_in_module_functions_are_probed_in_vmlinux(tmp_path):
    (tmp_path / "9.9-test").mkdir()
    (tmp_path / "9.9-test" / "modules.builtin").write_text("kernel/drivers/gpu/drm/ttm/ttm.ko\n")
    source = SymbolSource(
        parse_kallsyms("ffffffff81800000 T ttm_move_memcpy\n"),
        ModuleFiles("9.9-test", str(tmp_path)),
    )
    resolution = resolve("ttm_move_memcpy", source)
    assert (resolution.probe_name, resolution.loaded) == ("ttm_move_memcpy", True)
    assert "built into vmlinux" in resolution.explanation


@pytest.mark.parametrize("release", DEBIAN_RELEASES)
def test_debian_vram_move_resolves_to_bo_driver_move_before_the_module_loads(
    release, host_kallsyms
):
    source = SymbolSource(host_kallsyms, debian_modules(release))
    resolution = resolve("drm_gem_vram_bo_driver_move", source)
    assert resolution.probe_name == "drm_vram_helper:bo_driver_move"
    assert resolution.how == INLINED and not resolution.loaded
    assert os.path.basename(resolution.module_file).startswith("drm_vram_helper.ko")


@pytest.mark.parametrize("release", DEBIAN_RELEASES)
def test_debian_ttm_functions_exist_in_the_unloaded_module(release, host_kallsyms):
    source = SymbolSource(host_kallsyms, debian_modules(release))
    for name in ("ttm_move_memcpy", "ttm_bo_move_memcpy", "ttm_kmap_iter_linear_io_init"):
        resolution = resolve(name, source)
        assert (resolution.probe_name, resolution.how) == (f"ttm:{name}", EXACT)
        assert not resolution.loaded


@pytest.mark.parametrize("release", DEBIAN_RELEASES)
def test_plain_module_function_name_suggests_mod_sym(release, host_kallsyms):
    source = SymbolSource(host_kallsyms, debian_modules(release))
    with pytest.raises(NotTraceable) as caught:
        resolve("bo_driver_move", source)
    assert "drm_vram_helper:bo_driver_move" in caught.value.hint
    with pytest.raises(NotTraceable, match="has no function ttm_move_memcp") as caught:
        resolve("ttm:ttm_move_memcp", source)
    assert "ttm:ttm_move_memcpy" in caught.value.hint


@pytest.mark.parametrize("release", DEBIAN_RELEASES)
def test_module_glob_expands_from_the_module_file_before_the_module_loads(host_kallsyms, release):
    files = debian_modules(release)
    names = expand_requests(["ttm:ttm_bo_move_*"], host_kallsyms, files)
    assert "ttm:ttm_bo_move_memcpy" in names
    assert all(name.startswith("ttm:ttm_bo_move_") for name in names)
    with pytest.raises(NotTraceable):
        expand_requests(["ttm:no_such_*"], host_kallsyms, files)


MTRR_FUNCTIONS = ("mtrr_add_page", "mtrr_del_page", "arch_phys_wc_add", "arch_phys_wc_del")


def test_mtrr_functions_are_optional_default_targets():
    from memtrace.probes.plan import DEFAULT_TARGETS

    for name in MTRR_FUNCTIONS:
        target = find_target(name)
        assert target.role == MTRR and not target.essential and target.module is None
        assert name in DEFAULT_TARGETS


def test_a_kernel_without_mtrr_functions_skips_them(host):
    # The 6.18 host's kallsyms excerpt has none of them: the default plan goes on without.
    from memtrace.probes.plan import DEFAULT_TARGETS, build_plan

    plan = build_plan(DEFAULT_TARGETS, host, lambda *_: None, strict=False)
    skipped = dict(plan.skipped)
    for name in MTRR_FUNCTIONS:
        assert "no function " + name in skipped[name]
    assert "memtype_reserve" in {p.fn for p in plan.probes}


def test_mtrr_functions_resolve_where_the_kernel_has_them():
    table = parse_kallsyms(
        "".join(f"ffffffff8106{i}000 T {name}\n" for i, name in enumerate(MTRR_FUNCTIONS))
    )
    for name in MTRR_FUNCTIONS:
        resolution = resolve(name, SymbolSource(table))
        assert (resolution.symbol, resolution.how, resolution.module) == (name, EXACT, None)


def test_the_names_misspellings_are_compared_with_are_indexed_once(host, monkeypatch):
    built = []

    class CountingIndex(targets.NameIndex):
        def __init__(self, *args, **kwargs):
            built.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(targets, "NameIndex", CountingIndex)
    for typed in ("memtype_reserv", "ioremap_wcc", "iounmapp"):
        with pytest.raises(NotTraceable) as caught:
            resolve(typed, host)
        assert caught.value.hint.startswith("closest names: ")
    assert len(built) == 1

"""/proc/kallsyms parsing: what a user asks of it is "does this function exist, and as what"."""

import os

import pytest

from memtrace.errors import BadInput, FeatureMissing
from memtrace.probes.kallsyms import clone_base, parse_kallsyms, read_kallsyms

# A grep of this machine's /proc/kallsyms (6.18 build); see tests/fixtures/README.md.
HOST_KALLSYMS = os.path.join(
    os.path.dirname(__file__), "..", "fixtures", "host-6.18", "proc", "kallsyms"
)


@pytest.fixture(scope="module")
def host():
    return read_kallsyms(HOST_KALLSYMS)


def test_pat_entry_points_are_global_text_in_vmlinux(host):
    for name in ("memtype_reserve", "memtype_free", "memtype_kernel_map_sync", "ioremap_wc"):
        (symbol,) = host.functions(name)
        assert symbol.type == "T" and symbol.module is None


def test_6_18_keeps_ioremap_caller_only_as_an_isra_clone(host):
    assert not host.has_function("__ioremap_caller")
    clones = {s.name for s in host.clones("__ioremap_caller")}
    assert clones == {"__ioremap_caller.isra.0", "__ioremap_caller.isra.0.cold"}


def test_cold_parts_are_clones_of_their_function(host):
    assert [s.name for s in host.clones("memtype_reserve")] == ["memtype_reserve.cold"]
    assert host.has_function("memtype_reserve")


def test_6_18_has_pfnmap_track_instead_of_track_pfn_remap(host):
    assert host.has_function("pfnmap_track")
    assert not host.has_function("track_pfn_remap")
    assert not host.has_function("reserve_pfn_range")


def test_ftrace_trampolines_are_not_counted_as_loaded_modules(host):
    assert host.functions("ftrace_trampoline")[0].module == "__builtin__ftrace"
    assert host.loaded_modules == frozenset()


def test_root_read_shows_addresses(host):
    assert not host.addresses_hidden
    assert host.functions("memtype_reserve")[0].address > 0


def test_zero_addresses_mean_they_were_hidden():
    table = parse_kallsyms("0000000000000000 T memtype_reserve\n0000000000000000 t foo\n")
    assert table.addresses_hidden
    assert table.has_function("memtype_reserve")


def test_module_symbols_carry_their_module():
    table = parse_kallsyms(
        "ffffffffc0a01230 t bo_driver_move\t[drm_vram_helper]\n"
        "ffffffffc0b00000 T ttm_move_memcpy\t[ttm]\n"
        "ffffffff81000000 T ioremap\n"
    )
    assert table.loaded_modules == {"drm_vram_helper", "ttm"}
    assert table.has_function("bo_driver_move", "drm_vram_helper")
    assert not table.has_function("bo_driver_move", "ttm")
    assert table.functions("ioremap", None)[0].module is None


def test_vmlinux_entry_comes_before_a_module_one():
    table = parse_kallsyms("ffffffffc0000000 t foo\t[mod]\nffffffff81000000 t foo\n")
    assert [s.module for s in table.functions("foo")] == [None, "mod"]


def test_data_symbols_are_not_functions():
    table = parse_kallsyms("ffffffff82000000 d memtype_lock\nffffffff82000010 D x\n")
    assert not table.has_function("memtype_lock")
    assert table.function_names() == set()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("__ioremap_caller.isra.0", ("__ioremap_caller", ("isra",))),
        ("foo.constprop.0.isra.0", ("foo", ("constprop", "isra"))),
        ("memtype_reserve.cold", ("memtype_reserve", ("cold",))),
        ("foo.part.3", ("foo", ("part",))),
        ("memtype_reserve", None),
        ("CSWTCH.123", None),
        (".isra.0", None),
        ("foo.bar.1", None),
    ],
)
def test_clone_base(name, expected):
    assert clone_base(name) == expected


def test_garbage_lines_are_counted_and_skipped():
    text = "\n".join(
        [
            "ffffffff81000000 T good_one",
            "garbage",
            "zzzz T bad_address",
            "ffffffff81000000 TT two_letter_type",
            "ffffffff81000000 t unterminated [module",
            "ffffffff81000000 t too many fields here",
            "ffffffff81000000 t empty_module []",
            "",
            "ffffffff81000010 t good_two\t[mod]",
        ]
    )
    table = parse_kallsyms(text)
    assert table.skipped_lines == 6
    assert table.function_names() == {"good_one", "good_two"}


def test_missing_kallsyms_is_a_feature_error(tmp_path):
    with pytest.raises(FeatureMissing, match="does not exist"):
        read_kallsyms(str(tmp_path / "kallsyms"))


def test_kallsyms_without_a_symbol_is_bad_input(tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text("this is not kallsyms\n")
    with pytest.raises(BadInput, match="lists no symbols"):
        read_kallsyms(str(path))

"""/proc/kallsyms parsing: what a user asks of it is "does this function exist, and as what"."""

import os

import pytest

from memtrace.errors import BadInput, FeatureMissing
from memtrace.probes.kallsyms import (
    KernelSymbol,
    ModuleIndex,
    SymbolTable,
    clone_base,
    parse_kallsyms,
    read_kallsyms,
)

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


def test_a_name_is_found_whole_not_as_the_start_of_another():
    table = parse_kallsyms(
        "ffffffff81000000 T ioremap_wc\n"
        "ffffffff81000010 T ioremap\n"
        "ffffffff81000020 t ioremap\t[mod]\n"
        "ffffffff81000030 d ioremap\n"
    )
    assert [(s.type, s.module) for s in table.functions("ioremap")] == [("T", None), ("t", "mod")]
    assert not table.has_function("ioremap_w")
    assert not table.has_function("T")  # a type letter is no name
    assert not table.has_function("ioremap wc")


def test_clones_come_grouped_by_name_in_order_of_first_appearance():
    table = parse_kallsyms(
        "ffffffff81000000 d foo.isra.0\n"
        "ffffffff81000010 t foo.cold\n"
        "ffffffff81000020 t foo.isra.0\n"
        "ffffffff81000030 t foo.cold\t[mod]\n"
        "ffffffff81000040 t foo.bar.1\n"
        "ffffffff81000050 t foox.cold\n"
    )
    assert [(s.name, s.module) for s in table.clones("foo")] == [
        ("foo.isra.0", None),
        ("foo.cold", None),
        ("foo.cold", "mod"),
    ]
    assert [s.name for s in table.clones("foo", "mod")] == ["foo.cold"]


def test_function_names_of_one_module_and_of_all():
    table = parse_kallsyms(
        "ffffffff81000000 T ioremap\n"
        "ffffffffc0a01230 t bo_driver_move\t[drm_vram_helper]\n"
        "ffffffffc0a01240 d vram_data\t[drm_vram_helper]\n"
        "ffffffffc0b00000 T ttm_move_memcpy\t[ttm]\n"
    )
    assert table.function_names() == {"ioremap", "bo_driver_move", "ttm_move_memcpy"}
    assert table.function_names("drm_vram_helper") == {"bo_driver_move"}
    assert table.function_names("drm") == frozenset()
    assert table.function_names("a module") == frozenset()
    assert table.function_names() is table.function_names()  # made once


def test_a_table_of_symbols_answers_as_one_parsed():
    symbols = [
        KernelSymbol(0xFFFFFFFF81000000, "T", "memtype_reserve", None),
        KernelSymbol(0xFFFFFFFF81000010, "t", "memtype_reserve.cold", None),
        KernelSymbol(0xFFFFFFFFC0B00000, "T", "ttm_move_memcpy", "ttm"),
    ]
    table = SymbolTable(symbols, skipped_lines=2)
    assert len(table) == 3 and table.skipped_lines == 2
    assert table.functions("memtype_reserve") == symbols[:1]
    assert table.clones("memtype_reserve") == symbols[1:2]
    assert table.loaded_modules == {"ttm"}
    assert not table.addresses_hidden


def test_an_empty_table_hides_no_addresses_and_is_false():
    table = parse_kallsyms("")
    assert len(table) == 0 and not table and not table.addresses_hidden


def test_module_index_names_the_owners_of_module_code_only(tmp_path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(
        "ffffffff81000000 T ioremap\n"
        "ffffffffc0000000 t foo\t[a]\n"
        "ffffffffc0000010 t foo\t[b]\n"
        "ffffffffc0000020 d bar\t[a]\n"
    )
    index = ModuleIndex(str(kallsyms), str(tmp_path / "modules"))
    assert index.owners("foo") == {"a", "b"}
    assert index.owners("ioremap") == set() and index.owners("bar") == set()
    assert index.module_of("foo") is None and index.module_of("foo", prefer="b") == "b"
    index.owners("foo").clear()  # the caller's copy
    assert index.owners("foo") == {"a", "b"}

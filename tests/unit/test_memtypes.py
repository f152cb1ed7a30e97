"""The PAT memory-type names must match what the kernel prints and what probes read."""

import pytest

from memtrace.analysis import memtypes

# enum page_cache_mode and cattr_name(), arch/x86/include/asm/pgtable_types.h and
# arch/x86/mm/pat/memtype.h.
KERNEL_TABLE = [
    (0, "WB", "write-back"),
    (1, "WC", "write-combining"),
    (2, "UC-", "uncached-minus"),
    (3, "UC", "uncached"),
    (4, "WT", "write-through"),
    (5, "WP", "write-protected"),
]


@pytest.mark.parametrize("value, short, cattr", KERNEL_TABLE)
def test_every_kernel_value_has_its_kernel_and_short_name(value, short, cattr):
    memtype = memtypes.from_value(value)
    assert (memtype.value, memtype.short, memtype.cattr) == (value, short, cattr)
    assert str(memtype) == short


@pytest.mark.parametrize("value, short, cattr", KERNEL_TABLE)
def test_each_spelling_converts_back_to_the_same_type(value, short, cattr):
    assert memtypes.from_cattr(cattr) is memtypes.from_value(value)
    assert memtypes.from_short(short) is memtypes.from_value(value)


def test_short_names_are_accepted_in_any_case():
    assert memtypes.from_short("uc-") is memtypes.UC_MINUS
    assert memtypes.from_short("wc") is memtypes.WC


@pytest.mark.parametrize("value", [6, 7, 8, 0xFFFFFFFF])
def test_a_value_outside_the_enum_is_named_broken_with_its_number(value):
    memtype = memtypes.from_value(value)
    assert memtype.short == f"broken({value})"
    assert memtype.cattr == "broken"  # what cattr_name() prints for it
    assert memtype.value == value


def test_the_kernels_broken_name_parses_without_a_value():
    memtype = memtypes.from_cattr("broken")
    assert memtype.value is None
    assert memtype.short == "broken"


def test_unknown_kernel_name_is_refused():
    with pytest.raises(ValueError, match="unknown memory type 'write-sometimes'"):
        memtypes.from_cattr("write-sometimes")


def test_unknown_short_name_is_refused_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"expected one of WB, WC, UC-, UC, WT, WP"):
        memtypes.from_short("XX")


def test_uncached_means_uc_minus_and_uc_only():
    assert memtypes.UNCACHED == {memtypes.UC_MINUS, memtypes.UC}

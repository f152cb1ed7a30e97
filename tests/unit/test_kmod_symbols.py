"""Module files that are not loaded: will MOD:SYM exist once the module loads?

The real Debian module files come from the set-up script (the lab kernels' packages); the
tests that read them skip, saying what to install, when their lab kernel is absent.
"""

import gzip
import os
import shutil
import struct

import pytest

from memtrace.errors import BadInput, FeatureMissing
from memtrace.probes import kmod_symbols
from memtrace.probes.kmod_symbols import (
    ModuleFiles,
    elf_section,
    module_name,
    parse_elf_functions,
    parse_modules_dep,
    read_module_file,
)
from tests.lab_kernels import lab_release, missing_lab_kernel

DEBIAN_6_1 = lab_release("6.1")
DEBIAN_6_12 = lab_release("6.12")
DRM = "kernel/drivers/gpu/drm"
VRAM_HELPER_6_1 = f"/lib/modules/{DEBIAN_6_1}/{DRM}/drm_vram_helper.ko"
TTM_6_1 = f"/lib/modules/{DEBIAN_6_1}/{DRM}/ttm/ttm.ko"
VRAM_HELPER_6_12 = f"/lib/modules/{DEBIAN_6_12}/{DRM}/drm_vram_helper.ko.xz"
TTM_6_12 = f"/lib/modules/{DEBIAN_6_12}/{DRM}/ttm/ttm.ko.xz"


def needs(series, path):
    """Skip unless the ``series`` lab kernel and its module file ``path`` are installed
    (scripts/setup.sh installs both)."""
    missing = missing_lab_kernel(series)
    if missing is None and not os.path.exists(path):
        missing = f"{path} not installed (the set-up script adds it)"
    return pytest.mark.skipif(missing is not None, reason=missing or f"{path} is installed")


def build_elf(functions, objects=()):
    """A minimal ELF64 relocatable: .text, .init.text, .symtab, .strtab, .shstrtab.

    ``functions`` are (name, binding, section) with binding 0 local / 1 global and section
    ".text" or ".init.text"; ``objects`` are names of OBJECT symbols.
    """
    shstrtab = b"\0.text\0.init.text\0.symtab\0.strtab\0.shstrtab\0"
    name_offset = {
        n: shstrtab.index(n.encode() + b"\0")
        for n in (".text", ".init.text", ".symtab", ".strtab", ".shstrtab")
    }
    strtab = b"\0"
    symtab = bytes(24)  # the null symbol
    section_index = {".text": 1, ".init.text": 2}
    for name, binding, section in functions:
        symtab += struct.pack(
            "<IBBHQQ", len(strtab), binding << 4 | 2, 0, section_index[section], 0, 16
        )
        strtab += name.encode() + b"\0"
    for name in objects:
        symtab += struct.pack("<IBBHQQ", len(strtab), 1 << 4 | 1, 0, 1, 0, 8)
        strtab += name.encode() + b"\0"
    text = b"\xc3" * 16
    body = [text, text, symtab, strtab, shstrtab]
    offsets, offset = [], 64
    for part in body:
        offsets.append(offset)
        offset += len(part)
    shoff = offset
    headers = [bytes(64)]
    kinds = [
        (".text", 1, 0),
        (".init.text", 1, 0),
        (".symtab", 2, 4),
        (".strtab", 3, 0),
        (".shstrtab", 3, 0),
    ]
    for (name, sh_type, link), part_offset, part in zip(kinds, offsets, body):
        entsize = 24 if sh_type == 2 else 0
        fields = (name_offset[name], sh_type, 0, 0, part_offset, len(part), link, 0, 1, entsize)
        headers.append(struct.pack("<IIQQQQIIQQ", *fields))
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = struct.pack(
        "<16sHHIQQQIHHHHHH", ident, 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(headers), 5
    )
    return header + b"".join(body) + b"".join(headers)


SYNTHETIC = build_elf(
    [
        ("bo_driver_move", 0, ".text"),
        ("ttm_move_memcpy", 1, ".text"),
        ("vram_init", 0, ".init.text"),
    ],
    objects=["a_table"],
)


def test_synthetic_module_lists_local_and_global_functions():
    functions = parse_elf_functions(SYNTHETIC)
    assert set(functions) == {"bo_driver_move", "ttm_move_memcpy", "vram_init"}
    assert functions["bo_driver_move"].binding == "local"
    assert functions["ttm_move_memcpy"].binding == "global"
    assert functions["bo_driver_move"].section == ".text"


def test_init_code_does_not_survive_loading(tmp_path):
    path = tmp_path / "vram.ko"
    path.write_bytes(SYNTHETIC)
    parsed = kmod_symbols.ModuleFunctions("vram", str(path), parse_elf_functions(SYNTHETIC))
    assert parsed.functions["vram_init"].freed_after_init
    assert not parsed.has("vram_init")
    assert parsed.has("bo_driver_move")


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"", "not an ELF file"),
        (b"MZ" + bytes(100), "not an ELF file"),
        (SYNTHETIC[:40], "not an ELF file"),
        (SYNTHETIC[:4] + bytes([1]) + SYNTHETIC[5:], "ELF64"),
        (SYNTHETIC[:-100], "past the end"),
        (SYNTHETIC[:200], "past the end"),
    ],
    ids=[
        "empty",
        "not-elf",
        "cut-in-header",
        "32-bit",
        "cut-in-section-headers",
        "cut-in-sections",
    ],
)
def test_malformed_elf_is_bad_input_naming_the_file(data, problem):
    with pytest.raises(BadInput, match=problem) as caught:
        parse_elf_functions(data, origin="broken.ko")
    assert caught.value.message.startswith("broken.ko: malformed ELF")


def test_sections_are_found_by_name():
    assert elf_section(SYNTHETIC, ".text") == b"\xc3" * 16
    assert elf_section(SYNTHETIC, ".BTF") is None
    with pytest.raises(BadInput, match="broken.ko: malformed ELF"):
        elf_section(SYNTHETIC[:200], ".text", origin="broken.ko")


def test_stripped_module_is_reported():
    no_symtab = bytearray(SYNTHETIC)
    shoff = struct.unpack_from("<Q", no_symtab, 40)[0]
    struct.pack_into("<I", no_symtab, shoff + 3 * 64 + 4, 1)  # .symtab -> PROGBITS
    with pytest.raises(BadInput, match="no .symtab"):
        parse_elf_functions(bytes(no_symtab))


@pytest.mark.parametrize(
    "path, name",
    [
        ("kernel/drivers/gpu/drm/ttm/ttm.ko", "ttm"),
        ("kernel/drivers/gpu/drm/drm_vram_helper.ko.xz", "drm_vram_helper"),
        ("drm-kms-helper.ko.zst", "drm_kms_helper"),
        ("x.ko.gz", "x"),
    ],
)
def test_module_name(path, name):
    assert module_name(path) == name


def test_modules_dep_maps_names_to_paths():
    text = (
        "kernel/drivers/gpu/drm/ttm/ttm.ko.xz: kernel/drivers/gpu/drm/drm.ko.xz\n"
        "kernel/drivers/gpu/drm/drm.ko.xz:\n"
        "garbage line without colon\n"
    )
    assert parse_modules_dep(text) == {
        "ttm": "kernel/drivers/gpu/drm/ttm/ttm.ko.xz",
        "drm": "kernel/drivers/gpu/drm/drm.ko.xz",
    }


def test_zstd_module_without_a_zstd_library_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "ttm.ko.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    monkeypatch.setattr(kmod_symbols, "find_zstd", lambda: None)
    with pytest.raises(FeatureMissing, match="zstd") as caught:
        read_module_file(str(path))
    assert "zstandard" in caught.value.hint


def test_gzip_and_corrupt_xz_modules(tmp_path):
    gz = tmp_path / "vram.ko.gz"
    gz.write_bytes(gzip.compress(SYNTHETIC))
    assert read_module_file(str(gz)) == SYNTHETIC
    xz = tmp_path / "vram.ko.xz"
    xz.write_bytes(b"\xfd7zXZ\x00 this is not xz")
    with pytest.raises(BadInput, match="corrupt compressed data"):
        read_module_file(str(xz))


def test_module_tree_without_modules_dep_is_walked(tmp_path):
    release = tmp_path / "9.9.9-test" / "kernel" / "drivers"
    release.mkdir(parents=True)
    (release / "drm-vram-helper.ko").write_bytes(SYNTHETIC)
    files = ModuleFiles("9.9.9-test", str(tmp_path))
    assert files.available
    assert files.path_of("drm_vram_helper").endswith("drivers/drm-vram-helper.ko")
    assert files.functions("drm_vram_helper").has("bo_driver_move")
    assert files.functions("bochs") is None


def test_absent_release_has_no_module_files(tmp_path):
    files = ModuleFiles("0.0.0-none", str(tmp_path))
    assert not files.available
    assert files.functions("ttm") is None


def test_modules_builtin_marks_built_in_modules(tmp_path):
    release = tmp_path / "9.9.9-test"
    release.mkdir()
    (release / "modules.builtin").write_text("kernel/drivers/gpu/drm/ttm/ttm.ko\n")
    files = ModuleFiles("9.9.9-test", str(tmp_path))
    assert files.is_builtin("ttm")
    assert not files.is_builtin("drm_vram_helper")


@needs("6.1", VRAM_HELPER_6_1)
def test_debian_6_1_vram_helper_inlines_the_move_into_bo_driver_move():
    functions = parse_elf_functions(read_module_file(VRAM_HELPER_6_1))
    assert functions["bo_driver_move"].binding == "local"
    assert "drm_gem_vram_bo_driver_move" not in functions
    assert "drm_gem_vram_bo_driver_move_notify" in functions


@needs("6.1", TTM_6_1)
def test_debian_6_1_ttm_has_the_memcpy_move_path():
    functions = parse_elf_functions(read_module_file(TTM_6_1))
    for name in ("ttm_move_memcpy", "ttm_bo_move_memcpy", "ttm_kmap_iter_linear_io_init"):
        assert functions[name].binding == "global"


@needs("6.12", VRAM_HELPER_6_12)
def test_debian_6_12_xz_vram_helper_inlines_the_move_too():
    files = ModuleFiles(DEBIAN_6_12)
    vram = files.functions("drm_vram_helper")
    assert vram.path == VRAM_HELPER_6_12
    assert vram.has("bo_driver_move")
    assert not vram.has("drm_gem_vram_bo_driver_move")


@needs("6.1", TTM_6_1)
def test_debian_6_1_ttm_carries_its_btf():
    btf = elf_section(read_module_file(TTM_6_1), ".BTF")
    assert btf[:2] == b"\x9f\xeb"  # BTF magic 0xeB9F, little-endian


@needs("6.12", TTM_6_12)
def test_debian_6_12_xz_ttm_found_through_modules_dep():
    ttm = ModuleFiles(DEBIAN_6_12).functions("ttm")
    assert ttm.path == TTM_6_12
    assert ttm.has("ttm_move_memcpy") and ttm.has("ttm_bo_move_memcpy")


@needs("6.1", VRAM_HELPER_6_1)
def test_truncated_real_module_is_bad_input(tmp_path):
    path = tmp_path / "drm_vram_helper.ko"
    with open(VRAM_HELPER_6_1, "rb") as source:
        path.write_bytes(source.read()[:4096])
    with pytest.raises(BadInput, match="malformed ELF"):
        parse_elf_functions(read_module_file(str(path)), origin=str(path))


@needs("6.1", VRAM_HELPER_6_1)
def test_gzip_copy_of_a_real_module_reads_the_same(tmp_path):
    path = tmp_path / "drm_vram_helper.ko.gz"
    with open(VRAM_HELPER_6_1, "rb") as source, gzip.open(path, "wb") as target:
        shutil.copyfileobj(source, target)
    plain = parse_elf_functions(read_module_file(VRAM_HELPER_6_1))
    assert parse_elf_functions(read_module_file(str(path))) == plain

"""PAT state detection (probes/pat_state.py) and the MTRR default type (probes/mtrr_state.py):
pure decisions over sources, and the readers on directories made under tmp_path."""

import os
import struct

import pytest

from memtrace.probes import mtrr_state, system_state
from memtrace.probes.mtrr_state import decode_def_type, mtrr_default_from_log, read_mtrr_default
from memtrace.probes.pat_state import pat_state_from_sources, read_pat_state

ENABLED_CONFIGURATION = "Configuration [0-7]: WB  WC  UC- UC  WB  WP  UC- WT"
# What a guest booted with nopat prints: the firmware's table (no WC) after the reason.
NOPAT_LOG = (
    "x86/PAT: PAT support disabled via boot option.\n"
    "x86/PAT: Configuration [0-7]: WB  WT  UC- UC  WB  WT  UC- UC  \n"
)
FLAGS = ("fpu", "pat", "hypervisor")


def state(
    kernel_log=None,
    cmdline=None,
    cpu_flags=None,
    xen_type=None,
    xen_guest_type=None,
    memtype_list_exists=None,
    kconfig_pat=None,
):
    return pat_state_from_sources(
        kernel_log, cmdline, cpu_flags, xen_type, xen_guest_type, memtype_list_exists, kconfig_pat
    )


def test_enabled_with_the_configuration_line_and_every_source_named():
    found = state(
        kernel_log=f"Hypervisor detected: KVM\nx86/PAT: {ENABLED_CONFIGURATION}  \n",
        cmdline="root=hostroot ro\n",
        cpu_flags=FLAGS,
        memtype_list_exists=True,
        kconfig_pat=True,
    )
    assert found == {
        "enabled": True,
        "configuration": ENABLED_CONFIGURATION,
        "reason": None,
        "evidence": [
            f"kernel log: x86/PAT: {ENABLED_CONFIGURATION}",
            "/proc/cmdline has no nopat",
            "/proc/cpuinfo flags include pat",
            "debugfs has x86/pat_memtype_list (created only when PAT is enabled)",
            "kernel config: CONFIG_X86_PAT=y",
        ],
    }


def test_the_configuration_line_alone_says_enabled():
    found = state(kernel_log=f"x86/PAT: {ENABLED_CONFIGURATION}\n")
    assert found["enabled"] is True and found["evidence"] == [
        f"kernel log: x86/PAT: {ENABLED_CONFIGURATION}"
    ]


def test_nopat_from_the_log_wins_over_its_configuration_line():
    found = state(
        kernel_log=NOPAT_LOG,
        cmdline="root=hostroot nopat",
        cpu_flags=FLAGS,
        memtype_list_exists=False,
    )
    assert found["enabled"] is False
    assert found["reason"] == "the kernel was booted with nopat"
    assert found["configuration"] == "Configuration [0-7]: WB  WT  UC- UC  WB  WT  UC- UC"
    assert found["evidence"][:2] == [
        "kernel log: x86/PAT: PAT support disabled via boot option.",
        "kernel log: x86/PAT: Configuration [0-7]: WB  WT  UC- UC  WB  WT  UC- UC",
    ]
    assert "/proc/cmdline has nopat" in found["evidence"]


def test_nopat_on_the_command_line_alone():
    found = state(cmdline="quiet nopat\n")
    assert (found["enabled"], found["reason"]) == (False, "the kernel was booted with nopat")
    assert found["evidence"] == ["/proc/cmdline has nopat"]
    assert state(cmdline="nopatience")["enabled"] is None  # a word, not a substring


@pytest.mark.parametrize(
    "line, reason",
    [
        (
            "x86/PAT: PAT not supported by the CPU.",
            "the CPU (or the hypervisor's CPU model) does not offer PAT",
        ),
        (
            "x86/PAT: PAT support disabled because CONFIG_MTRR is disabled in the kernel.",
            "the kernel is built without CONFIG_MTRR",
        ),
        (
            "x86/PAT: PAT support disabled because CONFIG_X86_PAT is disabled in the kernel.",
            "the kernel is built without CONFIG_X86_PAT",
        ),
        ("x86/PAT: PAT support disabled by the firmware.", "the firmware left the PAT MSR zero"),
        ("PAT support disabled.", "the kernel was booted with nopat"),  # before 4.2: no prefix
        (
            "x86/PAT: PAT support disabled for some new reason.",
            "the kernel logged: PAT support disabled for some new reason.",
        ),
    ],
)
def test_each_disabling_message_gives_its_reason(line, reason):
    found = state(kernel_log=f"foo\n{line}\nbar\n")
    assert (found["enabled"], found["reason"]) == (False, reason)
    assert found["evidence"] == [f"kernel log: {line}"]


def test_cpu_without_the_pat_flag():
    found = state(cpu_flags=("fpu", "hypervisor"))
    assert found["enabled"] is False
    assert found["reason"] == "the CPU (or the hypervisor's CPU model) does not offer PAT"
    assert found["evidence"] == ["/proc/cpuinfo flags lack pat"]
    assert state(cpu_flags="fpu pat hypervisor")["evidence"] == ["/proc/cpuinfo flags include pat"]


def test_config_without_x86_pat():
    found = state(kconfig_pat=False, cpu_flags=FLAGS)
    assert (found["enabled"], found["reason"]) == (
        False,
        "the kernel is built without CONFIG_X86_PAT",
    )


def test_missing_list_while_debugfs_is_readable():
    found = state(memtype_list_exists=False, cpu_flags=FLAGS, cmdline="ro")
    assert found["enabled"] is False and "did not create" in found["reason"]


def test_xen_pv_is_named_in_the_evidence_and_the_reason():
    found = state(
        kernel_log="x86/PAT: PAT support disabled because CONFIG_X86_PAT is "
        "disabled in the kernel.\n",
        xen_type="xen\n",
        xen_guest_type="PV\n",
    )
    assert found["reason"] == "the kernel is built without CONFIG_X86_PAT (a Xen PV guest)"
    assert "/sys/hypervisor: Xen PV guest" in found["evidence"]
    enabled = state(
        kernel_log=f"x86/PAT: {ENABLED_CONFIGURATION}", xen_type="xen", xen_guest_type="HVM"
    )
    assert enabled["enabled"] is True and "/sys/hypervisor: Xen HVM guest" in enabled["evidence"]


def test_unknown_when_nothing_decides():
    found = state(cmdline="ro", cpu_flags=FLAGS, kconfig_pat=True)
    assert found["enabled"] is None and found["reason"] is None
    assert found["configuration"] is None
    assert state() == {"enabled": None, "configuration": None, "reason": None, "evidence": []}
    rotated = state(kernel_log="something else\n")
    assert rotated["evidence"] == ["the kernel log has no x86/PAT line (it may have rotated out)"]


# -- reading a capture directory -------------------------------------------------------------


def write(root, path, text):
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(full, mode) as stream:
        stream.write(text)
    return full


def nopat_capture(root):
    write(root, "kernel-release", "6.12.117+deb12-amd64\n")
    write(root, "kernel-log", NOPAT_LOG)
    write(root, "proc/cmdline", "root=hostroot nopat\n")
    write(root, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu pat hypervisor\n")
    write(
        root, "proc/mtrr", "reg00: base=0x0c0000000 ( 3072MB), size= 1024MB, count=1: uncachable\n"
    )
    write(root, "boot/config-6.12.117+deb12-amd64", "CONFIG_X86_PAT=y\nCONFIG_MTRR=y\n")
    return root


def test_read_pat_state_from_a_capture(tmp_path):
    found = read_pat_state(nopat_capture(str(tmp_path)))
    assert (found["enabled"], found["reason"]) == (False, "the kernel was booted with nopat")
    assert found["evidence"] == [
        "kernel log: x86/PAT: PAT support disabled via boot option.",
        "kernel log: x86/PAT: Configuration [0-7]: WB  WT  UC- UC  WB  WT  UC- UC",
        "/proc/cmdline has nopat",
        "/proc/cpuinfo flags include pat",
        "kernel config: CONFIG_X86_PAT=y",
    ]


def test_a_capture_with_nothing_in_it_is_unknown(tmp_path):
    assert read_pat_state(str(tmp_path)) == {
        "enabled": None,
        "configuration": None,
        "reason": None,
        "evidence": [],
    }


def test_a_captured_list_means_enabled_and_dmesg_is_read_too(tmp_path):
    write(str(tmp_path), "dmesg", f"[    0.000000] x86/PAT: {ENABLED_CONFIGURATION}  \n")
    write(str(tmp_path), "sys/kernel/debug/x86/pat_memtype_list", "PAT memtype list:\n")
    found = read_pat_state(str(tmp_path))
    assert found["enabled"] is True and found["configuration"] == ENABLED_CONFIGURATION


def test_system_state_carries_pat_and_the_mtrrs(tmp_path):
    root = nopat_capture(str(tmp_path))
    write(root, "proc/iomem", "fd000000-fdffffff : 0000:00:02.0\n")
    write(root, "dev/cpu/0/msr", b"\0" * 0x2FF + struct.pack("<Q", 0xC06))
    state_now = system_state.read_state(root)
    assert state_now.pat["enabled"] is False
    assert state_now.mtrr_text.startswith("reg00: base=0x0c0000000")
    assert state_now.mtrr_default == {
        "type": "WB",
        "enabled": True,
        "fixed_enabled": True,
        "source": f"IA32_MTRR_DEF_TYPE (MSR 0x2ff) via {root}/dev/cpu/0/msr",
    }
    assert state_now.mtrr_default_note is None
    os.remove(os.path.join(root, "dev/cpu/0/msr"))
    os.remove(os.path.join(root, "proc/mtrr"))
    state_now = system_state.read_state(root)
    assert state_now.mtrr_text is None and state_now.mtrr_default is None
    assert state_now.mtrr_default_note.startswith(
        "the MTRR default type is unknown: the capture has no dev/cpu/0/msr copy"
    )


# -- the MTRR default type -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (0xC06, ("WB", True, True)),  # SeaBIOS: MTRRs and fixed ranges on, default WB
        (0x800, ("UC", True, False)),
        (0x001, ("WC", False, False)),
        (0x404, ("WT", False, True)),
        (0xC05, ("WP", True, True)),
        (0x802, ("invalid (2)", True, False)),
        (0xFFFFFFFF00000C06, ("WB", True, True)),  # reserved high bits change nothing
    ],
)
def test_msr_decoding(value, expected):
    decoded = decode_def_type(struct.pack("<Q", value))
    assert (decoded["type"], decoded["enabled"], decoded["fixed_enabled"]) == expected
    assert decoded["source"] == "IA32_MTRR_DEF_TYPE (MSR 0x2ff) via /dev/cpu/0/msr"


def test_msr_decoding_needs_8_bytes():
    with pytest.raises(ValueError, match="8 bytes"):
        decode_def_type(b"\x06\x0c")


def test_reading_the_msr_through_a_device_like_file(tmp_path):
    msr = write(str(tmp_path), "msr", b"\xff" * 0x2FF + struct.pack("<Q", 0xC06) + b"\xff" * 8)
    found, note = read_mtrr_default(msr)
    assert note is None and (found["type"], found["enabled"]) == ("WB", True)
    assert found["source"] == f"IA32_MTRR_DEF_TYPE (MSR 0x2ff) via {msr}"


def test_without_the_msr_device_the_note_says_how_to_get_it(tmp_path):
    found, note = read_mtrr_default(str(tmp_path / "absent"))
    assert found is None
    assert note == (
        f"the MTRR default type is unknown: {tmp_path}/absent is absent (modprobe msr to read it)"
    )
    found, note = read_mtrr_default(mtrr_state.MSR_DEVICE + ".nonexistent")
    assert note.endswith("is absent (modprobe msr to read it)")


def test_the_kernel_log_is_the_second_source(tmp_path):
    log = (
        "MTRR default type: write-back\nMTRR fixed ranges enabled:\n"
        "  00000-9FFFF write-back\nMTRR variable ranges enabled:\n"
    )
    found, note = read_mtrr_default(str(tmp_path / "absent"), kernel_log=log)
    assert note is None
    assert found == {
        "type": "WB",
        "enabled": True,
        "fixed_enabled": True,
        "source": "the kernel log (MTRR default type: write-back)",
    }
    assert mtrr_default_from_log("MTRR default type: uncachable\n") == {
        "type": "UC",
        "enabled": None,
        "fixed_enabled": None,
        "source": "the kernel log (MTRR default type: uncachable)",
    }
    assert mtrr_default_from_log("nothing\n") is None and mtrr_default_from_log(None) is None

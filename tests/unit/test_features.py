"""Feature checks, on machine trees built under tmp_path (KernelFeatures(root=...)).

Two trees stand for the two kinds of machine memtrace meets: this host's kind (6.18 build,
no kprobes, no modules) and a lab guest's (Debian kernel with kprobes, tracefs and modules).
"""

import os
import shutil
import subprocess
import sys

import pytest

from memtrace.probes import features, tracefs
from memtrace.probes.features import (
    FAIL,
    INFO,
    OK,
    WARN,
    KernelFeatures,
    parse_cpuinfo,
    parse_kconfig,
    running_kernel_features,
    tsc_mhz,
)
from tests.lab_kernels import lab_release, requires_lab_kernel

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
HOST_KALLSYMS = os.path.join(FIXTURES, "host-6.18", "proc", "kallsyms")
DEBIAN_6_1 = lab_release("6.1")

EPYC_CPUINFO = (
    "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.138\n"
    "flags\t\t: fpu pat constant_tsc nonstop_tsc tsc_known_freq hypervisor\n\n"
    "processor\t: 1\nmodel name\t: AMD EPYC\n"
)
XEON_CPUINFO = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz\n"
    "cpu MHz\t\t: 3900.000\nflags\t\t: fpu pat constant_tsc\n"
)


def write(root, path, text=""):
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as stream:
        stream.write(text)
    return full


def build_host_like(root, release="6.18.44-test"):
    """A machine like this host: no kprobes, no module support, PAT on, nothing mounted."""
    write(root, "/proc/mounts", "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n")
    write(root, f"/boot/config-{release}", "# CONFIG_KPROBES is not set\nCONFIG_X86_PAT=y\n")
    write(root, "/proc/cpuinfo", EPYC_CPUINFO)
    write(root, "/proc/cmdline", "console=ttyS0 quiet\n")
    write(root, "/sys/kernel/btf/vmlinux")
    os.makedirs(os.path.join(root, "sys/bus/event_source/devices/software"))
    shutil.copy(HOST_KALLSYMS, write(root, "/proc/kallsyms"))
    return release


def build_lab_like(root, release="6.1.0-test"):
    """A lab guest: kprobes (tracefs and perf PMU), debugfs, PAT list, headers, modules."""
    write(
        root,
        "/proc/mounts",
        "debugfs /sys/kernel/debug debugfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw 0 0\n",
    )
    write(root, f"/boot/config-{release}", "CONFIG_KPROBES=y\nCONFIG_KPROBE_EVENTS=y\n")
    write(root, "/proc/cpuinfo", XEON_CPUINFO)
    write(root, "/proc/cmdline", "root=/dev/root ro\n")
    write(root, "/proc/modules", "ttm 86016 1 drm_vram_helper, Live 0x0\n")
    write(root, "/sys/kernel/tracing/kprobe_events")
    write(root, "/sys/kernel/tracing/available_filter_functions", "memtype_reserve\nioremap\n")
    write(
        root,
        "/sys/kernel/debug/kprobes/blacklist",
        "0xffffffff81000000-0xffffffff81000010\tdo_int3\n",
    )
    write(
        root,
        "/sys/kernel/debug/x86/pat_memtype_list",
        "PAT memtype list:\nPAT: [mem 0x00000000fd000000-0x00000000fe000000] uncached-minus\n",
    )
    write(root, "/sys/kernel/btf/vmlinux")
    os.makedirs(os.path.join(root, "sys/bus/event_source/devices/kprobe"))
    os.makedirs(os.path.join(root, f"lib/modules/{release}/build/include"))
    shutil.copy(HOST_KALLSYMS, write(root, "/proc/kallsyms"))
    return release


@pytest.fixture
def no_hardware(monkeypatch):
    """bcc imports and the PMU cycle counter is absent, whatever this machine has."""
    monkeypatch.setattr(features, "import_bcc", lambda: ("0.26.0", None))
    monkeypatch.setattr(
        features,
        "probe_cycle_counter",
        lambda: (None, "perf_event_open: ENOENT, no hardware PMU exposed"),
    )


@pytest.fixture
def host_like(tmp_path, no_hardware):
    release = build_host_like(str(tmp_path))
    return KernelFeatures(root=str(tmp_path), release=release, euid=0)


@pytest.fixture
def lab_like(tmp_path, no_hardware):
    release = build_lab_like(str(tmp_path))
    return KernelFeatures(root=str(tmp_path), release=release, euid=0)


def by_name(kernel):
    return {check.name: check for check in kernel.checks()}


def test_kernel_without_kprobes_fails_and_says_what_still_works(host_like):
    check = host_like.kprobes_check
    assert check.status == FAIL
    assert "CONFIG_KPROBES is not set" in check.detail
    assert "no perf kprobe PMU" in check.detail
    assert "memtrace snapshot" in check.hint and "memtrace lab" in check.hint
    assert not host_like.live_probing
    assert host_like.backends == {"bcc": False, "tracefs": False}
    assert "memtrace snapshot" in host_like.verdict()


def test_lab_guest_can_probe_live_with_both_backends(lab_like):
    checks = by_name(lab_like)
    assert checks["kprobes"].status == OK
    assert checks["bcc"].status == OK
    assert lab_like.live_probing
    assert lab_like.backends == {"bcc": True, "tracefs": True}
    assert "live probing possible" in lab_like.verdict()


def test_without_root_nothing_can_probe(tmp_path, no_hardware):
    release = build_lab_like(str(tmp_path))
    kernel = KernelFeatures(root=str(tmp_path), release=release, euid=1000)
    assert kernel.root_check.status == FAIL and "sudo" in kernel.root_check.hint
    assert not kernel.live_probing
    assert "root" in kernel.verdict()


def test_unmounted_file_systems_are_reported_not_mounted_for_a_copied_tree(host_like):
    # Only the real root may be mounted on; a tree under tmp_path is read as it is.
    checks = by_name(host_like)
    assert checks["debugfs"].status == WARN and "mount -t debugfs" in checks["debugfs"].hint
    assert checks["tracefs"].status == WARN
    assert "kprobe_events unknown (tracefs not mounted)" in checks["kprobes"].detail


def test_mounted_file_systems_are_located(lab_like):
    checks = by_name(lab_like)
    assert checks["debugfs"].detail == "mounted at /sys/kernel/debug"
    assert checks["tracefs"].detail == "mounted at /sys/kernel/tracing"


def test_bcc_without_headers_is_a_warning_naming_the_package(host_like):
    check = host_like.bcc_check
    assert check.status == WARN
    assert "no kernel headers" in check.detail
    assert "linux-headers-6.18.44-test" in check.hint


def test_bcc_that_does_not_import(lab_like, monkeypatch):
    monkeypatch.setattr(features, "import_bcc", lambda: (None, "ModuleNotFoundError: bcc"))
    assert lab_like.bcc_check.status == WARN
    assert "python3-bpfcc" in lab_like.bcc_check.hint
    assert lab_like.backends == {"bcc": False, "tracefs": True}


def test_vm_without_pmu_is_information_with_the_tsc_rate(host_like):
    check = host_like.cycle_counter_check
    assert check.status == INFO
    assert "TSC 2596.138 MHz" in check.detail and "derives cycles" in check.detail


def test_usable_cycle_counter(host_like, monkeypatch):
    monkeypatch.setattr(features, "probe_cycle_counter", lambda: (123456, None))
    assert host_like.cycle_counter_check.status == OK


def test_pat_enabled_counts_tracked_ranges(lab_like):
    assert lab_like.pat_check.status == OK
    assert lab_like.pat_check.detail.startswith("PAT enabled")
    assert "tracks 1 ranges" in lab_like.pat_check.detail


def test_pat_enabled_names_the_configuration_line(tmp_path, no_hardware):
    release = build_lab_like(str(tmp_path))
    write(
        str(tmp_path),
        "/kernel-log",
        "x86/PAT: Configuration [0-7]: WB  WC  UC- UC  WB  WP  UC- WT  \n",
    )
    check = KernelFeatures(root=str(tmp_path), release=release, euid=0).pat_check
    assert check.status == OK
    assert "x86/PAT: Configuration [0-7]: WB  WC  UC- UC  WB  WP  UC- WT;" in check.detail


def _nopat_guest(root):
    """A lab guest booted with nopat: the kernel said so, and made no pat_memtype_list."""
    release = build_lab_like(root)
    write(root, "/proc/cmdline", "root=/dev/root nopat\n")
    write(
        root,
        "/kernel-log",
        "x86/PAT: PAT support disabled via boot option.\n"
        "x86/PAT: Configuration [0-7]: WB  WT  UC- UC  WB  WT  UC- UC  \n",
    )
    os.remove(os.path.join(root, "sys/kernel/debug/x86/pat_memtype_list"))
    return release


def test_nopat_warns_with_the_reason_and_evidence_and_does_not_fail(tmp_path, no_hardware):
    release = _nopat_guest(str(tmp_path))
    kernel = KernelFeatures(root=str(tmp_path), release=release, euid=0)
    check = kernel.pat_check
    assert check.status == WARN
    assert check.detail.startswith(
        "PAT disabled (the kernel was booted with nopat; evidence: "
        "kernel log: x86/PAT: PAT support disabled via boot option."
    )
    assert "/proc/cmdline has nopat" in check.detail
    assert "no x86/pat_memtype_list" in check.detail
    assert check.hint.startswith(
        "tracing still works; with PAT off every write-combining "
        "request (ioremap_wc, WC mmaps) gets UC- page bits"
    )
    assert "arch_phys_wc_add gets WC through an MTRR" in check.hint
    assert kernel.live_probing and "live probing possible" in kernel.verdict()


def test_cpu_without_pat_warns(tmp_path, no_hardware):
    release = build_lab_like(str(tmp_path))
    write(str(tmp_path), "/proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu constant_tsc\n")
    write(str(tmp_path), "/kernel-log", "x86/PAT: PAT not supported by the CPU.\n")
    os.remove(os.path.join(tmp_path, "sys/kernel/debug/x86/pat_memtype_list"))
    check = KernelFeatures(root=str(tmp_path), release=release, euid=0).pat_check
    assert check.status == WARN
    assert "does not offer PAT" in check.detail and "/proc/cpuinfo flags lack pat" in check.detail


def test_pat_list_missing_while_debugfs_is_mounted(tmp_path, no_hardware):
    release = build_lab_like(str(tmp_path))
    os.remove(os.path.join(tmp_path, "sys/kernel/debug/x86/pat_memtype_list"))
    kernel = KernelFeatures(root=str(tmp_path), release=release, euid=0)
    assert kernel.pat_check.status == WARN
    assert "did not create x86/pat_memtype_list" in kernel.pat_check.detail


def test_pat_state_unknown_is_information(host_like):
    # No debugfs, no kernel log, the flag and the config say nothing decisive.
    check = host_like.pat_check
    assert check.status == INFO and check.detail.startswith("PAT state unknown")
    assert "/proc/cpuinfo flags include pat" in check.detail


def test_function_lists_are_read_in_the_guest(lab_like):
    check = lab_like.function_lists_check
    assert check.status == OK
    assert "kprobe blacklist: 1 entries" in check.detail


def test_target_lines_on_the_host_kind(host_like):
    checks = by_name(host_like)
    assert checks["memtype_reserve"].status == OK
    assert checks["memtype_reserve"].detail == "memtype_reserve in vmlinux"
    assert "pfnmap_track" in checks["track_pfn_remap"].detail
    assert checks["ttm_move_memcpy"].status == WARN
    assert "cannot load modules" in checks["ttm_move_memcpy"].hint


def test_missing_essential_target_fails_and_optional_one_warns(tmp_path, no_hardware):
    release = build_host_like(str(tmp_path))
    write(str(tmp_path), "/proc/kallsyms", "ffffffff81000000 T memtype_free\n")
    kernel = KernelFeatures(root=str(tmp_path), release=release, euid=0)
    checks = by_name(kernel)
    assert checks["memtype_reserve"].status == FAIL
    assert checks["ioremap_wt"].status == WARN


def test_notrace_targets_are_marked_when_ftrace_lists_are_readable(lab_like):
    checks = by_name(lab_like)
    assert "notrace" not in checks["memtype_reserve"].detail
    assert "notrace: kprobe only" in checks["ioremap_wc"].detail


@requires_lab_kernel("6.1")
def test_unloaded_module_target_will_be_probed_when_it_loads(tmp_path, no_hardware):
    build_lab_like(str(tmp_path), release=DEBIAN_6_1)
    os.rmdir(os.path.join(tmp_path, f"lib/modules/{DEBIAN_6_1}/build/include"))
    os.rmdir(os.path.join(tmp_path, f"lib/modules/{DEBIAN_6_1}/build"))
    os.rmdir(os.path.join(tmp_path, f"lib/modules/{DEBIAN_6_1}"))
    os.symlink(f"/lib/modules/{DEBIAN_6_1}", os.path.join(tmp_path, f"lib/modules/{DEBIAN_6_1}"))
    kernel = KernelFeatures(root=str(tmp_path), release=DEBIAN_6_1, euid=0)
    checks = by_name(kernel)
    assert checks["ttm_move_memcpy"].status == INFO
    assert checks["ttm_move_memcpy"].detail == (
        "ttm:ttm_move_memcpy in ttm.ko, not loaded: will be probed when it loads"
    )
    vram = checks["drm_gem_vram_bo_driver_move"].detail
    assert vram.startswith("drm_vram_helper:bo_driver_move in drm_vram_helper.ko, not loaded")
    assert "inlined into caller" in vram


def test_checks_are_computed_once(host_like, monkeypatch):
    first = host_like.checks()
    monkeypatch.setattr(features, "probe_cycle_counter", lambda: (1, None))
    assert host_like.checks() == first
    assert running_kernel_features(False) is running_kernel_features(False)


def test_parse_kconfig():
    config = parse_kconfig('CONFIG_KPROBES=y\n# CONFIG_FOO is not set\nCONFIG_S="x y"\n#junk\n')
    assert config == {"CONFIG_KPROBES": "y", "CONFIG_FOO": None, "CONFIG_S": "x y"}


def test_cpuinfo_reads_the_first_processor_only():
    flags, fields = parse_cpuinfo(EPYC_CPUINFO)
    assert "pat" in flags and fields["processor"] == "0"


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        (XEON_CPUINFO, (2100.0, "the CPU brand string")),
        (EPYC_CPUINFO, (2596.138, "'cpu MHz' in /proc/cpuinfo (constant_tsc)")),
        ("model name\t: old\ncpu MHz\t: 800.0\nflags\t: fpu\n", None),
        ("", None),
    ],
)
def test_tsc_frequency(cpuinfo, expected):
    assert tsc_mhz(cpuinfo) == expected


def test_parse_mounts_unescapes_and_locates():
    mounts = tracefs.parse_mounts(
        "debugfs /sys/kernel/debug debugfs rw 0 0\n"
        "tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n"
        "none /mnt/with\\040space tmpfs rw 0 0\nshort line\n"
    )
    assert mounts[2].mount_point == "/mnt/with space"
    assert tracefs.locate_debugfs(mounts) == "/sys/kernel/debug"
    assert tracefs.locate_tracefs(mounts) == "/sys/kernel/debug/tracing"
    assert tracefs.locate_tracefs(mounts[2:]) is None


def test_tracefs_at_its_own_mount_point_is_preferred():
    mounts = tracefs.parse_mounts(
        "tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n"
        "tracefs /sys/kernel/tracing tracefs rw 0 0\n"
    )
    assert tracefs.locate_tracefs(mounts) == "/sys/kernel/tracing"


def test_ensure_mounted_without_permission_changes_nothing(tmp_path):
    mounts = write(str(tmp_path), "/proc/mounts", "proc /proc proc rw 0 0\n")
    debugfs, trace = tracefs.ensure_mounted(allow_mount=False, mounts_path=mounts)
    assert debugfs.path is None and "not allowed" in debugfs.error
    assert trace.path is None and not trace.mounted_now


def test_kprobe_blacklist_and_filter_function_lines():
    assert tracefs.parse_kprobe_blacklist(
        "0xffffffff81000000-0xffffffff81000010\tdo_int3\n0x0-0x0\tnotify_die\njunk\n"
    ) == {"do_int3", "notify_die"}
    assert tracefs.parse_filter_functions(
        "memtype_reserve\nbo_driver_move [drm_vram_helper]\n\n"
    ) == {
        ("memtype_reserve", None),
        ("bo_driver_move", "drm_vram_helper"),
    }


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="mounting needs root and unshare(1) for a private mount namespace",
)
def test_ensure_mounted_mounts_in_a_private_namespace():
    # In a private mount namespace the child first unmounts both file systems, so that
    # ensure_mounted has to mount them; none of it is seen outside the child.
    before = open("/proc/mounts").read()
    code = (
        "from memtrace.probes.tracefs import ensure_mounted\n"
        "for state in ensure_mounted(): print(state.fstype, state.path, state.mounted_now)\n"
    )
    script = (
        "for d in /sys/kernel/tracing /sys/kernel/debug/tracing /sys/kernel/debug; do"
        ' umount "$d" 2>/dev/null; done; exec "$0" -c "$1"'
    )
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, sys.executable, code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"no private mount namespace here: {result.stderr.strip()}")
    assert result.stdout.splitlines() == [
        "debugfs /sys/kernel/debug True",
        "tracefs /sys/kernel/tracing True",
    ], result.stderr
    assert open("/proc/mounts").read() == before


# -- process watch: tried for real on the running kernel -------------------------------------


class _Watcher:
    """Stands in for ProcessWatcher: fails to start with ``error``, else reports ``stats``."""

    error = None
    stats_given = None
    stopped = 0

    def start(self):
        if self.error:
            raise self.error
        return self

    def stop(self):
        _Watcher.stopped += 1

    def stats(self):
        return self.stats_given


def _running(monkeypatch, error=None, stats=None):
    from memtrace.probes import process_watch

    monkeypatch.setattr(_Watcher, "error", error)
    monkeypatch.setattr(_Watcher, "stats_given", stats)
    monkeypatch.setattr(_Watcher, "stopped", 0)
    monkeypatch.setattr(process_watch, "ProcessWatcher", _Watcher)
    return KernelFeatures(allow_mount=False, euid=0).process_watch_check


def test_process_watch_refused_is_a_warning_with_what_it_costs(monkeypatch):
    from memtrace.probes.process_watch import NEEDS_ROOT_HINT, ProcessWatchUnavailable

    check = _running(
        monkeypatch,
        error=ProcessWatchUnavailable(
            "process connector: not allowed to subscribe", NEEDS_ROOT_HINT
        ),
    )
    assert check.status == WARN and check.detail == "process connector: not allowed to subscribe"
    assert check.hint == f"{NEEDS_ROOT_HINT}; reports cannot show restart loops"
    assert _Watcher.stopped == 1


def test_process_watch_without_taskstats_is_information(monkeypatch):
    ok = {"status": "ok", "reason": None}
    check = _running(
        monkeypatch,
        stats=dict(
            ok,
            uevents=ok,
            exit_names={
                "status": "unavailable",
                "reason": "exit names (taskstats): this kernel has no "
                "taskstats family (built without CONFIG_TASKSTATS)",
            },
        ),
    )
    assert check.status == INFO
    assert check.detail.startswith("process connector ok; exit names (taskstats): ")
    assert _Watcher.stopped == 1


def test_process_watch_is_not_tried_on_another_machines_tree(host_like):
    check = host_like.process_watch_check
    assert check.status == INFO and check.detail.startswith("not checked")


def test_process_watch_on_this_machine():
    from memtrace.probes.process_watch import ProcessWatcher, ProcessWatchUnavailable

    try:
        ProcessWatcher(uevents=False, exit_names=False).start().stop()
    except ProcessWatchUnavailable as err:
        pytest.skip(f"the process connector cannot be opened here: {err.one_line()}")
    check = KernelFeatures(allow_mount=False).process_watch_check
    assert check.status in (OK, INFO), check
    assert check.detail.startswith("process connector")

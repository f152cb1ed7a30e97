"""`memtrace lab`: run a command as root inside a throwaway QEMU guest of a Debian kernel."""

import argparse
import os
import sys

from memtrace.errors import BadInput
from memtrace.lab import kernels, qemu
from memtrace.lab.initramfs import ensure_initramfs
from memtrace.tools.arg_types import seconds_type

DESCRIPTION = "run a command as root in a throwaway QEMU guest booted from a Debian kernel"
EPILOG = """\
The guest's root file system is this machine's /, shared read-only; the current directory is
shared writable at the same path, so files the command writes appear here.

examples:
  memtrace lab -- uname -r
  memtrace lab --kernel 6.1 --vga std -- sh -c 'modprobe bochs && memtrace snapshot'
  memtrace lab --vga qxl -- sh -c 'modprobe qxl && cat /sys/kernel/debug/x86/pat_memtype_list'
  memtrace lab --device virtio-vga -- sh -c 'modprobe virtio-gpu && memtrace snapshot'
  memtrace lab --append iomem=relaxed -- CMD
                                  let user space map BARs a driver claimed (Debian kernels
                                  have CONFIG_IO_STRICT_DEVMEM)
  memtrace lab --prepare          build the cached initramfs of every lab kernel, test KVM

exit status: the command's own; 124 when the guest did not finish in --timeout seconds;
125 when the guest could not be prepared or booted, or stopped before the command finished.
"""


def add_arguments(parser):
    """Register `memtrace lab`'s options on ``parser``."""
    parser.add_argument(
        "--kernel",
        metavar="6.1|6.12|RELEASE",
        help="kernel series or full release (default: newest installed)",
    )
    parser.add_argument(
        "--vga",
        choices=qemu.VGA_MODELS,
        help="display device: std is 1234:1111 (bochs-drm), qxl is QXL "
        "(default: std, or none with --device)",
    )
    parser.add_argument(
        "--device",
        choices=qemu.DISPLAY_DEVICES,
        help="a display device QEMU adds with -device instead of a -vga one: "
        "bochs-display (bochs-drm, no VGA), cirrus-vga (cirrus), "
        "virtio-vga (virtio-gpu)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_type("600"),
        default=600,
        metavar="S",
        help="stop the guest after S seconds (default: 600)",
    )
    parser.add_argument("--keep-console", metavar="F", help="save the guest's console log to F")
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="directory shared writable, and the command's cwd (default: .)",
    )
    parser.add_argument(
        "--append",
        action="append",
        default=[],
        metavar="PARAM",
        help="add a kernel command-line parameter, e.g. iomem=relaxed (repeatable)",
    )
    parser.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto tests KVM once (a short boot) and caches the answer",
    )
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="build and cache what the lab needs, boot nothing else",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS]",
        help="the command to run inside the guest",
    )


def _prepare(args):
    cache_dir = qemu.default_cache_dir()
    found = kernels.installed_kernels()
    if not found:
        kernels.select_kernel(None)  # raises the install hint
    for kernel in found:
        path = ensure_initramfs(cache_dir, kernel)
        problem = kernels.check_headers(kernel)
        print(f"{kernel.release}: initramfs {path}" + (f"; {problem}" if problem else ""))
    accel = qemu.detect_accel(cache_dir, found[0])
    print(f"accelerator: {accel}")
    return 0


def run(args):
    """Boot the guest, run the command, return its exit status."""
    if args.prepare:
        return _prepare(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise BadInput("no command given", "put it after --, e.g. memtrace lab -- uname -r")
    if args.timeout <= 0:
        raise BadInput("--timeout must be positive")
    vga = args.vga or ("none" if args.device else "std")
    if args.device and vga != "none":
        raise BadInput(
            f"--vga {vga} and --device {args.device} both add a display device", "give one of them"
        )
    kernel = kernels.select_kernel(args.kernel)
    workdir = os.path.realpath(args.workdir or os.getcwd())
    if not os.path.isdir(workdir):
        raise BadInput(f"--workdir {workdir} is not a directory")
    accel = None if args.accel == "auto" else args.accel
    result = qemu.run_in_guest(
        kernel,
        command,
        vga=vga,
        timeout=args.timeout,
        workdir=workdir,
        accel=accel,
        keep_console=args.keep_console,
        append_extra=args.append,
        device=args.device,
    )
    print(
        f"memtrace lab: {kernel.release} ({result.accel}), command exited {result.exit_status}"
        f" after {result.seconds:.1f} s",
        file=sys.stderr,
    )
    return result.exit_status

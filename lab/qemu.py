"""Boot a lab kernel under QEMU, run one command as root inside it, collect what it printed.

The guest's root is the host's / over read-only virtio-9p (see ../shared/lab.md); a private
job directory is shared writable for the command, its output and its exit status; the
command's working directory is shared writable at the same path, so files it writes appear
on the host.
"""

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from memtrace.errors import LabError, LabTimeout
from memtrace.lab.initramfs import ensure_initramfs

QEMU = "qemu-system-x86_64"
GUEST_INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest-init.sh")
VGA_MODELS = ("std", "qxl", "none")
# Display devices QEMU adds with -device NAME (instead of -vga): bochs-display is bochs-drm's
# device without VGA compatibility, cirrus-vga is what -vga cirrus adds, virtio-vga is
# virtio-gpu with a VGA BAR.
DISPLAY_DEVICES = ("bochs-display", "cirrus-vga", "virtio-vga")
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000"
# The guest mounts tmpfs here, hiding whatever the host has below them.
GUEST_TMPFS = ("/tmp", "/run")
KVM_PROBE_TIMEOUT = 25
CONSOLE_TAIL_LINES = 20


@dataclasses.dataclass
class GuestRun:
    """What a finished guest run produced."""

    exit_status: int
    stdout: bytes
    stderr: bytes
    console_log: str
    seconds: float
    accel: str


def default_cache_dir():
    """The directory for cached initramfs images and the KVM verdict."""
    if os.environ.get("MEMTRACE_CACHE_DIR"):
        return os.environ["MEMTRACE_CACHE_DIR"]
    if os.geteuid() == 0:
        return "/var/cache/memtrace"
    return os.path.join(os.path.expanduser("~"), ".cache", "memtrace")


def _hidden_in_guest(path):
    return any(path == top or path.startswith(top + "/") for top in GUEST_TMPFS)


def _inside(path, parent):
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def plan_shares(workdir, extra_readonly=()):
    """Return (tag, mode, host path) for every directory the guest mounts at its own path:
    the writable work directory, plus read-only ones the guest's tmpfs would hide."""
    shares = []
    if workdir:
        shares.append(("workdir", "rw", workdir))
    for index, path in enumerate(sorted(set(extra_readonly))):
        if not _hidden_in_guest(path) or (workdir and _inside(path, workdir)):
            continue
        shares.append((f"keep{index}", "ro", path))
    return shares


def _memtrace_paths():
    """Where this memtrace and its Python environment live (the guest must see them)."""
    package_top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {package_top, os.path.realpath(sys.prefix)}


def _command_script(argv, workdir):
    path = os.environ.get("PATH", "")
    system_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    guest_path = ":".join(p for p in [path, system_path] if p)
    env = {
        "HOME": "/tmp/home",
        "LANG": "C.UTF-8",
        "PATH": guest_path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "TERM": "dumb",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("MEMTRACE_")})
    lines = [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    lines.append(f"cd -- {shlex.quote(workdir or '/')} || exit 125")
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"


# One vCPU under TCG: with two, the 6.12 guest oopsed in ttwu_do_activate at an instruction
# the kernel was live-patching (text_poke while attaching probes), twice in four test runs;
# multi-threaded TCG's cross-modifying code is the suspect. One vCPU costs no test anything.
TCG_CPUS = 1
KVM_CPUS = 2


def display_arguments(vga="std", device=None):
    """Return the QEMU arguments that give the guest its display device.

    :param vga: a ``-vga`` model of :data:`VGA_MODELS`
    :param device: one of :data:`DISPLAY_DEVICES`, added with ``-device`` in place of the
        ``-vga`` one (``vga`` must then be ``none``), or None
    :raises LabError: for an unknown model or device, or both a ``-vga`` model and a device
    """
    if vga not in VGA_MODELS:
        raise LabError(f"unknown --vga '{vga}'", f"use one of: {', '.join(VGA_MODELS)}")
    if device is None:
        return ["-vga", vga]
    if device not in DISPLAY_DEVICES:
        raise LabError(f"unknown --device '{device}'", f"use one of: {', '.join(DISPLAY_DEVICES)}")
    if vga != "none":
        raise LabError(
            f"--vga {vga} and --device {device} both add a display device", "give one of them"
        )
    return ["-vga", "none", "-device", device]


def qemu_command(
    kernel,
    initrd,
    job_dir,
    shares,
    vga="std",
    accel="tcg",
    memory_mb=2048,
    cpus=None,
    append_extra=(),
    device=None,
):
    """Return the QEMU argv for one lab boot; ``append_extra`` adds kernel parameters.

    ``cpus`` defaults to :data:`TCG_CPUS` under TCG and :data:`KVM_CPUS` under KVM;
    ``vga`` and ``device`` are as for :func:`display_arguments`.
    """
    if cpus is None:
        cpus = TCG_CPUS if accel == "tcg" else KVM_CPUS
    display = display_arguments(vga, device)
    append = " ".join(
        [
            "console=ttyS0",
            "root=hostroot",
            "rootfstype=9p",
            f"rootflags={NINEP_OPTIONS}",
            "ro",
            f"init={GUEST_INIT}",
            "panic=-1",
            "oops=panic",
            *append_extra,
        ]
    )
    cmd = [
        QEMU,
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-m",
        str(memory_mb),
        "-smp",
        str(cpus),
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{os.path.join(job_dir, 'console.log')}",
        # Before the 9p shares, so that a -device display gets slot 00:02.0 as -vga does.
        *display,
        "-kernel",
        kernel.image,
        "-initrd",
        initrd,
        "-append",
        append,
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={job_dir},mount_tag=memtrace-job,security_model=none,multidevs=remap",
    ]
    for tag, mode, path in shares:
        readonly = ",readonly=on" if mode == "ro" else ""
        cmd += [
            "-virtfs",
            f"local,path={path},mount_tag={tag},security_model=none{readonly},multidevs=remap",
        ]
    if accel == "kvm":
        cmd += ["-enable-kvm", "-cpu", "host"]
    return cmd


def _tail(path, lines=CONSOLE_TAIL_LINES):
    try:
        with open(path, "rb") as log:
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return ["(no console output)"]
    return text.splitlines()[-lines:] or ["(console log is empty)"]


class _Follower:
    """Copies what the guest appends to a file onto one of our streams while it runs."""

    def __init__(self, path, stream):
        self.path, self.stream, self.offset = path, stream, 0

    def poll(self):
        try:
            with open(self.path, "rb") as src:
                src.seek(self.offset)
                data = src.read()
        except FileNotFoundError:
            return
        if data and self.stream is not None:
            self.offset += len(data)
            out = getattr(self.stream, "buffer", self.stream)
            out.write(data)
            self.stream.flush()
        else:
            self.offset += len(data)


def run_in_guest(
    kernel,
    argv,
    vga="std",
    timeout=600,
    workdir=None,
    accel=None,
    cache_dir=None,
    keep_console=None,
    stream=True,
    append_extra=(),
    device=None,
    readonly_paths=(),
):
    """Boot ``kernel``, run ``argv`` as root in ``workdir`` and return a GuestRun.

    The display device is ``vga`` or, with ``vga="none"``, ``device`` (see
    :func:`display_arguments`). ``readonly_paths`` are host directories the command needs
    besides memtrace's own (shared read-only where the guest's tmpfs would hide them).

    The command's output is copied to our stdout/stderr as it appears when ``stream`` is
    true. Raises LabTimeout when the guest outlives ``timeout`` seconds and LabError when
    it stops without the command having finished (panic, missing init, QEMU failure).
    """
    if shutil.which(QEMU) is None:
        raise LabError(f"{QEMU} not found", "install it with: apt-get install qemu-system-x86")
    if not os.access(kernel.image, os.R_OK):
        raise LabError(f"cannot read {kernel.image}", "run memtrace lab as root")
    if workdir == "/":
        raise LabError(
            "refusing to share / writable into the guest",
            "run from a project directory or pass --workdir DIR",
        )
    display_arguments(vga, device)  # a wrong device is an error before anything is built
    cache_dir = cache_dir or default_cache_dir()
    initrd = ensure_initramfs(cache_dir, kernel)
    accel = accel or detect_accel(cache_dir, kernel)
    with tempfile.TemporaryDirectory(prefix="memtrace-lab-") as job_dir:
        shares = plan_shares(workdir, _memtrace_paths() | set(readonly_paths))
        with open(os.path.join(job_dir, "shares"), "w", encoding="utf-8") as out:
            out.writelines(f"{tag} {mode} {path}\n" for tag, mode, path in shares)
        with open(os.path.join(job_dir, "cmd.sh"), "w", encoding="utf-8") as out:
            out.write(_command_script(argv, workdir))
        cmd = qemu_command(
            kernel,
            initrd,
            job_dir,
            shares,
            vga=vga,
            accel=accel,
            append_extra=append_extra,
            device=device,
        )
        try:
            return _boot(cmd, job_dir, timeout, accel, keep_console, stream)
        finally:
            if keep_console:
                shutil.copyfile(os.path.join(job_dir, "console.log"), keep_console)


def _boot(cmd, job_dir, timeout, accel, keep_console, stream):
    followers = []
    if stream:
        followers = [
            _Follower(os.path.join(job_dir, "stdout"), sys.stdout),
            _Follower(os.path.join(job_dir, "stderr"), sys.stderr),
        ]
    qemu_log = os.path.join(job_dir, "qemu.err")
    started = time.monotonic()
    with open(qemu_log, "wb") as qemu_err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=qemu_err, stderr=qemu_err, start_new_session=True
        )
        try:
            while proc.poll() is None and time.monotonic() - started < timeout:
                for follower in followers:
                    follower.poll()
                time.sleep(0.2)
        finally:
            timed_out = proc.poll() is None
            if timed_out:
                _stop(proc)
    for follower in followers:
        follower.poll()
    seconds = time.monotonic() - started
    console = os.path.join(job_dir, "console.log")
    rc_path = os.path.join(job_dir, "rc")
    if os.path.exists(rc_path):
        with open(rc_path, encoding="ascii") as rc_file:
            status = int(rc_file.read().strip() or 125)
        return GuestRun(
            status,
            _read(job_dir, "stdout"),
            _read(job_dir, "stderr"),
            keep_console or "",
            seconds,
            accel,
        )
    if timed_out:
        raise LabTimeout(
            f"the guest did not finish within {timeout:g} s ({accel}); last console lines:",
            details=_tail(console),
        )
    qemu_err_lines = _tail(qemu_log, 5)
    if proc.returncode not in (0, None) and os.path.getsize(qemu_log):
        raise LabError(
            f"QEMU failed (exit {proc.returncode}): {qemu_err_lines[-1]}", details=_tail(console)
        )
    raise LabError(
        "the guest stopped before the command finished (kernel panic or init "
        "failure?); last console lines:",
        details=_tail(console),
    )


def _read(job_dir, name):
    try:
        with open(os.path.join(job_dir, name), "rb") as src:
            return src.read()
    except FileNotFoundError:
        return b""


def _stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def detect_accel(cache_dir, kernel):
    """Return 'kvm' when a KVM guest really boots here, else 'tcg'; the answer is cached.

    /dev/kvm can exist while nested KVM hangs right after decompressing the kernel, so the
    only trustworthy test is a short real boot. MEMTRACE_LAB_ACCEL=kvm|tcg overrides it.
    """
    forced = os.environ.get("MEMTRACE_LAB_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    verdict_path = os.path.join(cache_dir, f"accel-{os.uname().release}")
    try:
        with open(verdict_path, encoding="ascii") as verdict:
            cached = verdict.read().strip()
        if cached in ("kvm", "tcg"):
            return cached
    except OSError:
        pass
    try:
        run = run_in_guest(
            kernel,
            ["true"],
            vga="none",
            timeout=KVM_PROBE_TIMEOUT,
            accel="kvm",
            cache_dir=cache_dir,
            stream=False,
        )
        accel = "kvm" if run.exit_status == 0 else "tcg"
    except LabError:
        accel = "tcg"
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    with open(verdict_path, "w", encoding="ascii") as verdict:
        verdict.write(accel + "\n")
    return accel

"""A workload whose PAT reservations memtrace's model must get exactly right.

usage: python3 pat_oracle_workload.py SLOT   (e.g. 0000:00:02.0, the std VGA device)

Run under `memtrace record` in a guest booted with iomem=relaxed (Debian's kernels have
CONFIG_IO_STRICT_DEVMEM: without it user space cannot map a BAR bochs claimed):

1. maps the framebuffer BAR's page 0 write-combining (resource0_wc) and page 1 uncached
   (resource0), and holds both;
2. maps pages 0-1 through resource0: the kernel compares the request with the first entry
   (WC) and refuses it because the other (UC-) differs: "conflicting memory types
   ...000-...2000 write-combining<->uncached-minus", mmap fails;
3. unmaps everything, loads bochs (its whole-BAR UC- ioremap, TTM's moves), writes a frame
   to /dev/fb0, maps resource0_wc again (adopts bochs' UC-), and unmaps it.

Prints one line per step; exits 0 when every step did what is described.
"""

import errno
import mmap
import os
import subprocess
import sys
import time

PAGE = mmap.PAGESIZE


def _map(path, pages, offset_pages=0):
    fd = os.open(path, os.O_RDWR | os.O_SYNC)
    try:
        area = mmap.mmap(
            fd,
            pages * PAGE,
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
            offset=offset_pages * PAGE,
        )
    finally:
        os.close(fd)
    area[0] = area[0]
    return area


def _write_frame(fb="/dev/fb0", limit=4 << 20):
    """Write zeros to the framebuffer device (bounded), as a console or splash would."""
    for _ in range(50):
        if os.path.exists(fb):
            break
        time.sleep(0.1)
    else:
        return "no " + fb
    with open(fb, "wb", buffering=0) as out:
        written = 0
        chunk = bytes(64 * 1024)
        try:
            while written < limit:
                written += out.write(chunk)
        except OSError as err:  # ENOSPC at the end of the framebuffer
            if err.errno != errno.ENOSPC:
                raise
    return f"wrote {written} bytes to {fb}"


def main():
    """Run the steps; exit 1 when one did not behave as described."""
    device = f"/sys/bus/pci/devices/{sys.argv[1]}"
    ok = True
    wc = _map(f"{device}/resource0_wc", 1, 0)
    uc = _map(f"{device}/resource0", 1, 1)
    print("oracle: holding page 0 WC and page 1 UC-", flush=True)
    try:
        _map(f"{device}/resource0", 2, 0).close()
        print("oracle: the spanning mapping was NOT refused", flush=True)
        ok = False
    except OSError as err:
        print(
            f"oracle: the spanning mapping was refused: {errno.errorcode.get(err.errno)}",
            flush=True,
        )
    wc.close()
    uc.close()
    status = subprocess.call(["modprobe", "bochs"])
    print(f"oracle: modprobe bochs exited {status}", flush=True)
    ok = ok and status == 0
    print(f"oracle: {_write_frame()}", flush=True)
    again = _map(f"{device}/resource0_wc", 1, 0)
    again.close()
    print("oracle: mapped resource0_wc under bochs and unmapped it", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

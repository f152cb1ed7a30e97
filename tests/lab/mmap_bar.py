"""Map a PCI BAR through sysfs the way a user-space driver or benchmark does.

usage: python3 mmap_bar.py /sys/bus/pci/devices/SLOT/resourceN[_wc] [COUNT]

Maps the first page COUNT times (default 1), touching it each time, and prints how long one
mmap/munmap pair took on average: the user-space path into track_pfn_remap/memtype_reserve.
"""

import mmap
import os
import sys
import time


def main():
    """Map, touch and unmap the BAR's first page COUNT times."""
    path = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    fd = os.open(path, os.O_RDWR | os.O_SYNC)
    try:
        started = time.perf_counter()
        for _ in range(count):
            area = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            area[0] = area[0]
            area.close()
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
    print(
        f"mmap_bar: {count} maps of {path} in {elapsed:.3f} s "
        f"({elapsed / count * 1e6:.1f} us per map+unmap)"
    )


if __name__ == "__main__":
    main()

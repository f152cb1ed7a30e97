"""Map the first page of a PCI BAR through sysfs, run a command while the mapping is held,
then unmap: a user mapping's reservation made before a driver maps the same BAR.

usage: python3 map_then_run.py /sys/bus/pci/devices/SLOT/resourceN[_wc] CMD [ARGS...]

With resource0_wc of the std VGA device and `modprobe bochs` (kernel booted with
iomem=relaxed, so that bochs claiming the BAR does not revoke the mapping), bochs'
ioremap() of the whole BAR overlaps the held WC reservation and is granted WC: TTM's moves
then run write-combined, the reverse of the seed's order.
"""

import mmap
import os
import subprocess
import sys


def main():
    """Hold the mapping while CMD runs; exit with CMD's status."""
    path, command = sys.argv[1], sys.argv[2:]
    fd = os.open(path, os.O_RDWR | os.O_SYNC)
    try:
        area = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        area[0] = area[0]
        status = subprocess.call(command)
        area.close()
    finally:
        os.close(fd)
    sys.exit(status)


if __name__ == "__main__":
    main()

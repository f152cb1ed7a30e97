"""The lab: boot a stock Debian kernel under QEMU with the host root shared read-only."""

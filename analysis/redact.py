"""Redaction of report documents: kernel virtual addresses and host names become stable
placeholders; physical addresses, which maintainers need, stay.

A kernel virtual address on x86-64 is 16 hex digits starting ``ffff`` (the direct map,
vmalloc/ioremap space, modules and the kernel image all live in the top half). Physical
addresses of PCI BARs and RAM are far shorter, so the pattern cannot take one for the
other. Pure functions; no I/O.
"""

import re

__all__ = ["KERNEL_ADDRESS", "Redactor"]

# 0xffff8c7704226100, ffffd19f00100dc0 (as tracefs prints stacks), with or without 0x.
KERNEL_ADDRESS = re.compile(
    r"(?<![0-9A-Za-z_])(?:0x)?ffff[0-9a-f]{12}(?![0-9A-Za-z_])", re.IGNORECASE
)
_MIN_HOSTNAME = 3  # shorter names would match inside ordinary words


class Redactor:
    """Replaces kernel addresses by ``<kaddr-N>`` (the same address, the same N throughout
    one document) and each known host name by its placeholder."""

    def __init__(self):
        self.addresses = {}
        self.hostnames = {}

    def add_hostname(self, hostname, placeholder):
        """Replace ``hostname`` by ``placeholder`` from now on (short names are kept: they
        would match inside words)."""
        if hostname and len(hostname) >= _MIN_HOSTNAME and hostname != placeholder:
            self.hostnames[hostname] = placeholder

    def _address(self, match):
        key = int(match.group(0), 16)
        if key not in self.addresses:
            self.addresses[key] = f"<kaddr-{len(self.addresses) + 1}>"
        return self.addresses[key]

    def text(self, value):
        """``value`` with addresses and host names replaced."""
        value = KERNEL_ADDRESS.sub(self._address, value)
        for hostname in sorted(self.hostnames, key=len, reverse=True):
            value = re.sub(
                rf"(?<![\w.-]){re.escape(hostname)}(?![\w-])", self.hostnames[hostname], value
            )
        return value

    def document(self, value):
        """A copy of the JSON-ready ``value`` with every string (keys too) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.document(k): self.document(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.document(item) for item in value]
        return value

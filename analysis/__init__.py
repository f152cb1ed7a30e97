"""Pure functions over events and snapshots: no I/O, no root, no bcc."""

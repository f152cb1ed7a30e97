"""Everything that touches the running kernel: tracefs, debugfs, sysfs, kallsyms, bcc."""

"""memtrace: trace x86 PAT memory types, ioremaps and TTM/DRM moves in Linux guests."""

__version__ = "0.1.0"

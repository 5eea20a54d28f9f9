"""How much memory the machine has and has free (Linux ``/proc/meminfo``, else psutil-free guesses)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MemoryInfo:
    """Total and currently available system memory, in bytes."""

    total: int
    available: int


def system_memory() -> MemoryInfo:
    """Read ``MemTotal``/``MemAvailable``; fall back to sysconf when /proc is not there."""
    try:
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts:
                fields[key] = int(parts[0]) * 1024
        return MemoryInfo(fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0)))
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        avail = os.sysconf("SC_AVPHYS_PAGES")
        return MemoryInfo(pages * size, avail * size)

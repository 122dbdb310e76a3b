"""What the CPU can do, as far as compiled code cares: native code built for one feature
set is reused only where the same features are present (the C++ kernel's and the
circuit's build caches key on this line)."""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> str:
    """The `flags` (x86) or `Features` (ARM) line of /proc/cpuinfo; empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return line
    return ""

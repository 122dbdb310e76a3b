"""What the CPU can do, as far as compiled code cares: native code built for one feature
set is reused only where the same features are present (the C++ kernel's and the
circuit's build caches key on this line)."""

from __future__ import annotations

import platform
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


def cpu_model() -> str:
    """The CPU's name, as benchmarks report the machine they ran on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

"""What each slot can hold: the memory a run may use there (docs/worker.md, "Memory"), and
its share of the CPUs.

A GPU slot holds its device's memory (`nvidia-smi`, whether the slot names the GPU by index
or UUID, or a MIG instance by its UUID; or torch in a throwaway subprocess where that tool
is missing: the worker itself never creates a CUDA context). A CPU slot holds the machine's
memory as this process may use it: the smaller of the RAM and the memory cgroup's limit (a
container's), shared equally by the CPU slots. `GATEQUEUE_SLOT_MEMORY` overrides both, for
every slot.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from service.worker.gpus import CPU, Slot, lookup, run_quietly, smi_devices

_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
_MEMINFO = Path("/proc/meminfo")
_UNLIMITED = 1 << 60  # what cgroup v1 reports as "no limit" is about 2^63


def host_memory_bytes(
    meminfo: Path = _MEMINFO, cgroup_limits: tuple[Path, ...] = _CGROUP_LIMITS
) -> int | None:
    """The RAM this process may use: MemTotal, or the memory cgroup's limit if lower."""
    total = None
    try:
        match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
        total = int(match.group(1)) * 1024 if match else None
    except OSError:
        pass
    for path in cgroup_limits:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < _UNLIMITED:
            total = int(raw) if total is None else min(total, int(raw))
        break
    return total


async def gpu_memory_bytes(ids: list[str]) -> dict[str, int]:
    """Total memory of each visible device id, where it can be found out."""
    if not ids:
        return {}
    devices = await smi_devices()
    if devices:
        found = {i: d.memory_bytes for i in ids if (d := lookup(devices, i)) is not None}
        return {i: m for i, m in found.items() if m is not None}
    code = (
        "import torch\n"
        "for i in range(torch.cuda.device_count()):\n"
        "    print(i, torch.cuda.get_device_properties(i).total_memory)\n"
    )
    text = await run_quietly([sys.executable, "-c", code])
    out: dict[str, int] = {}
    # torch numbers the visible devices 0..n-1 in CUDA_VISIBLE_DEVICES order
    for line, device in zip((text or "").splitlines(), ids, strict=False):
        index, _, total = line.partition(" ")
        if index.isdigit() and total.isdigit():
            out[device] = int(total)
    return out


async def with_memory(slots: list[Slot], override: int | None = None) -> list[Slot]:
    """The slots with what each can hold (None where it cannot be found out)."""
    if override is not None:
        return [s.with_memory(override) for s in slots]
    cpu_slots = [s for s in slots if s.gpu == CPU]
    host = host_memory_bytes() if cpu_slots else None
    gpus = await gpu_memory_bytes([s.gpu for s in slots if s.gpu != CPU])
    out = []
    for slot in slots:
        if slot.gpu == CPU:
            out.append(slot.with_memory(host // len(cpu_slots) if host else None))
        else:
            out.append(slot.with_memory(gpus.get(slot.gpu)))
    return out


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def share_cpus(slots: list[Slot], cpus: int | None = None) -> list[Slot]:
    """Each slot with `cpus // len(slots)` threads (at least one) where there are several
    slots; a single slot keeps the trainer's default (every CPU)."""
    if len(slots) < 2:
        return slots
    each = max(1, (cpus or cpu_count()) // len(slots))
    return [s.with_threads(each) for s in slots]

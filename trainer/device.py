"""What the trainer asks of its device beyond computing: the GPU's model, the memory a run
reserved there, what an allocation failure looks like, and the optimizer for the device.

`gpu_peak_mib` is the measured figure the memory estimate (trainer.memory) is checked
against: the caching allocator's high-water mark of reserved memory, which is what the run
holds on the GPU besides the CUDA context (nvidia-smi shows both together).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

MiB = 1 << 20


def gpu_model(device: torch.device | str) -> str | None:
    """The GPU's name ("NVIDIA H100 80GB HBM3"), or None for a device that is no GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return str(torch.cuda.get_device_name(device))


def gpu_peak_mib(device: torch.device | str) -> float | None:
    """The most GPU memory this process's allocator has reserved so far, in MiB (rounded to
    0.1); None on a device that is no GPU. Reserved, not allocated: the allocator keeps freed
    blocks for reuse, so reserved is what other processes on the GPU cannot have."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_reserved(device) / MiB, 1)


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a failed allocation: torch.OutOfMemoryError exists from
    torch 2.5 on; before, torch.cuda.OutOfMemoryError (which it now aliases)."""
    types: list[type[BaseException]] = [MemoryError]
    for owner in (torch, getattr(torch, "cuda", None)):
        oom = getattr(owner, "OutOfMemoryError", None)
        if isinstance(oom, type) and issubclass(oom, BaseException) and oom not in types:
            types.append(oom)
    return tuple(types)


def make_optimizer(
    params: Iterable[torch.Tensor],
    lr: float,
    device: torch.device | str,
    *,
    capturable: bool = False,
) -> torch.optim.Adam:
    """Adam for a run on `device`.

    On the CPU: torch's default Adam, unchanged, so that CPU runs and their checkpoints
    repeat bit for bit. On CUDA: the fused implementation (one kernel for every parameter's
    update instead of a dozen small ones per tensor); `capturable` keeps its step count on
    the GPU so that a CUDA graph can capture the step (trainer.cuda_step)."""
    if torch.device(device).type != "cuda":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, fused=True, capturable=capturable)

"""Worker slots: one training run per GPU, or one CPU slot on a machine without CUDA.

Detection never imports torch into the worker: a CUDA context in the supervisor would hold
GPU memory on every device for no run at all. `nvidia-smi -L` answers in milliseconds;
torch is only asked, in a throwaway subprocess, where that tool is missing.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace

import structlog

from service import config

log = structlog.get_logger(__name__)

CPU = "cpu"
_NVIDIA_SMI_GPU = re.compile(r"^GPU (\d+):", re.MULTILINE)
_DETECT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Slot:
    """Where one run executes; `gpu` is a CUDA device id as the worker sees it, or "cpu"."""

    gpu: str
    # Bytes a run may use here (service.worker.capacity); None: not known, nothing refused.
    memory_bytes: int | None = None

    @property
    def is_cpu(self) -> bool:
        return self.gpu == CPU

    @property
    def device(self) -> str:
        """The device kind of trainer.memory's estimates: "cpu" or "cuda"."""
        return "cpu" if self.is_cpu else "cuda"

    def with_memory(self, memory_bytes: int | None) -> Slot:
        return replace(self, memory_bytes=memory_bytes)

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The run's environment: only its own device is visible, so the trainer's `cuda:0`
        is this slot's GPU; a CPU slot sees none, so it cannot take a GPU by accident."""
        env = dict(base)
        env["CUDA_VISIBLE_DEVICES"] = "" if self.is_cpu else self.gpu
        return env

    def device_args(self) -> list[str]:
        return ["--device", "cpu" if self.is_cpu else "cuda"]


async def resolve_slots(
    configured: tuple[str, ...] | None, env: Mapping[str, str] | None = None
) -> list[Slot]:
    """`GATEQUEUE_GPUS` when set, else every visible CUDA device, else one CPU slot."""
    if configured:
        return [Slot(g) for g in configured]
    gpus = await detect_gpus(config.environment(env))
    if not gpus:
        log.info("no CUDA device found; one CPU slot")
        return [Slot(CPU)]
    log.info("CUDA devices found", gpus=list(gpus))
    return [Slot(g) for g in gpus]


async def detect_gpus(env: Mapping[str, str]) -> tuple[str, ...]:
    """Device ids this process may use.

    A `CUDA_VISIBLE_DEVICES` already set for the worker is respected as the list of ids (the
    runs then get those ids, which is what the driver expects); nvidia-smi ignores that
    variable, so it only decides when the variable is absent.
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = tuple(v.strip() for v in visible.split(",") if v.strip())
        # "-1" (or any invalid id) hides every device from CUDA from there on.
        out: list[str] = []
        for v in ids:
            if v.startswith("-"):
                break
            out.append(v)
        return tuple(out)
    smi = shutil.which("nvidia-smi")
    if smi:
        text = await run_quietly([smi, "-L"])
        if text is not None:
            return tuple(_NVIDIA_SMI_GPU.findall(text))
    text = await run_quietly(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"]
    )
    if text is not None and text.strip().isdigit():
        return tuple(str(i) for i in range(int(text.strip())))
    return ()


async def run_quietly(argv: list[str]) -> str | None:
    """stdout of a short command, or `None` if it failed, hung or does not exist."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(_DETECT_TIMEOUT_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("device detection timed out", command=argv[0])
        return None
    if proc.returncode != 0:
        return None
    return out.decode(errors="replace")

"""Worker slots: one training run per GPU (or per MIG instance), or one CPU slot on a
machine without CUDA.

Detection never imports torch into the worker: a CUDA context in the supervisor would hold
GPU memory on every device for no run at all. `nvidia-smi -L` answers in milliseconds;
torch is only asked, in a throwaway subprocess, where that tool is missing.

Slot ids are what `CUDA_VISIBLE_DEVICES` takes: a whole GPU by its nvidia-smi index, a MIG
instance by its `MIG-...` UUID (an index cannot select one). nvidia-smi numbers GPUs in PCI
bus order and CUDA, by default, fastest first: each run's environment sets
`CUDA_DEVICE_ORDER=PCI_BUS_ID` so that index N is the same GPU for both.
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
# `nvidia-smi -L`: "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5b...)", and under a GPU in
# MIG mode one line per instance: "  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4...)"
# (drivers before R470: "MIG-GPU-<gpu uuid>/<gi>/<ci>").
_SMI_GPU = re.compile(r"^GPU (\d+): (.*?)(?: \(UUID: (GPU-[^)\s]+)\))?\s*$")
_SMI_MIG = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)\s]+)\)\s*$")
# A MIG profile's name carries its memory in (decimal) gigabytes: "1g.5gb", "3g.40gb",
# "1g.10gb+me". The instance has a little more (1g.5gb: 4864 MiB); counting the name's
# figure errs on the side of refusing a run.
_MIG_PROFILE_MEMORY = re.compile(r"^\d+g\.(\d+)gb")
_DETECT_TIMEOUT_S = 60.0
# nvidia-smi's fields for what a slot holds, in this order; drivers without MIG (before
# R450) do not know the last field, and are asked for the others.
SMI_QUERY = [
    "--query-gpu=index,uuid,memory.total,mig.mode.current",
    "--format=csv,noheader,nounits",
]
SMI_QUERY_NO_MIG = ["--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Device:
    """A CUDA device a run can be given: a whole GPU, or one MIG instance of a GPU."""

    id: str  # what CUDA_VISIBLE_DEVICES takes: the GPU's index, or the instance's MIG UUID
    uuid: str
    name: str
    memory_bytes: int | None = None
    gpu_index: str = ""  # the physical GPU (for a MIG instance, its parent's index)


def parse_smi_list(text: str) -> tuple[list[Device], dict[str, list[Device]]]:
    """`nvidia-smi -L` as (whole GPUs, MIG instances by their GPU's index)."""
    gpus: list[Device] = []
    migs: dict[str, list[Device]] = {}
    for line in text.splitlines():
        if gpu := _SMI_GPU.match(line):
            index, name, uuid = gpu.groups()
            gpus.append(Device(index, uuid or "", name.strip(), gpu_index=index))
        elif (mig := _SMI_MIG.match(line)) and gpus:
            profile, _, uuid = mig.groups()
            size = _MIG_PROFILE_MEMORY.match(profile)
            parent = gpus[-1]
            migs.setdefault(parent.id, []).append(
                Device(
                    uuid,
                    uuid,
                    f"{parent.name} MIG {profile}",
                    int(size.group(1)) * 10**9 if size else None,
                    gpu_index=parent.id,
                )
            )
    return gpus, migs


def parse_smi_query(text: str) -> dict[str, tuple[str, int | None, bool]]:
    """`nvidia-smi` with SMI_QUERY: (uuid, memory bytes, MIG mode on) by GPU index."""
    out: dict[str, tuple[str, int | None, bool]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        memory = int(parts[2]) << 20 if parts[2].isdigit() else None  # MiB
        mig = len(parts) > 3 and parts[3].lower() == "enabled"
        out[parts[0]] = (parts[1], memory, mig)
    return out


def devices_from_smi(list_text: str, query_text: str | None) -> list[Device]:
    """The devices runs can be given, in nvidia-smi's (PCI) order: each GPU, or, for a GPU
    in MIG mode, each of its instances (none if it has none: CUDA cannot use such a GPU
    whole). Memory from the query where it answered (GPUs), else from the profile (MIG)."""
    gpus, migs = parse_smi_list(list_text)
    query = parse_smi_query(query_text or "")
    out: list[Device] = []
    for gpu in gpus:
        _, memory, mig_mode = query.get(gpu.id, (gpu.uuid, None, False))
        if gpu.id in migs:
            out.extend(migs[gpu.id])
        elif mig_mode:
            log.warning("GPU in MIG mode without MIG instances: no slot", gpu=gpu.id)
        else:
            out.append(replace(gpu, memory_bytes=memory))
    return out


def lookup(devices: list[Device], device_id: str) -> Device | None:
    """The device that `device_id` (an index, a GPU or MIG UUID, or a unique UUID prefix,
    as CUDA_VISIBLE_DEVICES accepts them) names."""
    for device in devices:
        if device_id == device.id or (device.uuid and device_id == device.uuid):
            return device
    matches = [d for d in devices if d.uuid and len(device_id) > 4 and d.uuid.startswith(device_id)]
    return matches[0] if len(matches) == 1 else None


async def smi_devices() -> list[Device] | None:
    """The devices nvidia-smi lists, or None where it is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    text = await run_quietly([smi, "-L"])
    if text is None:
        return None
    query = await run_quietly([smi, *SMI_QUERY])
    if query is None:
        query = await run_quietly([smi, *SMI_QUERY_NO_MIG])
    return devices_from_smi(text, query)


@dataclass(frozen=True)
class Slot:
    """Where one run executes; `gpu` is a CUDA device id as the worker sees it (an index or
    a UUID, MIG-... for a MIG instance), or "cpu"."""

    gpu: str
    # Bytes a run may use here (service.worker.capacity); None: not known, nothing refused.
    memory_bytes: int | None = None
    # CPU threads a run may use here (capacity.share_cpus); None: the trainer's default.
    threads: int | None = None

    @property
    def is_cpu(self) -> bool:
        return self.gpu == CPU

    @property
    def device(self) -> str:
        """The device kind of trainer.memory's estimates: "cpu" or "cuda"."""
        return "cpu" if self.is_cpu else "cuda"

    def with_memory(self, memory_bytes: int | None) -> Slot:
        return replace(self, memory_bytes=memory_bytes)

    def with_threads(self, threads: int | None) -> Slot:
        return replace(self, threads=threads)

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The run's environment: only its own device is visible, so the trainer's `cuda:0`
        is this slot's GPU; a CPU slot sees none, so it cannot take a GPU by accident.

        `CUDA_DEVICE_ORDER=PCI_BUS_ID`: an index means the GPU nvidia-smi calls so. A GPU
        slot's allocator uses expandable segments, which keep reserved memory close to
        allocated (less fragmentation for the estimate to absorb), unless the worker's own
        environment configures the allocator. `OMP_NUM_THREADS`: the slot's share of the
        CPUs, so that runs on one machine do not take each other's cores (and disturb each
        other's step and circuit timings), unless the worker's environment sets it."""
        env = dict(base)
        env["CUDA_VISIBLE_DEVICES"] = "" if self.is_cpu else self.gpu
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if not self.is_cpu:
            env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        if self.threads is not None:
            env.setdefault("OMP_NUM_THREADS", str(self.threads))
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
    variable, so it only decides when the variable is absent: every GPU by index, and each
    MIG instance of a GPU in MIG mode by its UUID (devices_from_smi).
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
    devices = await smi_devices()
    if devices is not None:
        return tuple(d.id for d in devices)
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
    except asyncio.CancelledError:  # stopped during start-up: reaped before the loop closes
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        return None
    return out.decode(errors="replace")

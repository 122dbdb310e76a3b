"""Slots on real GPU machines, from recorded `nvidia-smi` outputs (nvidia_smi/): one H100,
eight A100s, A100s in MIG mode (current and pre-R470 drivers), mixed cards. A stand-in
`nvidia-smi` on PATH prints them, so detection runs its real subprocess path; no MongoDB."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from service.worker.capacity import share_cpus, with_memory
from service.worker.gpus import Slot, devices_from_smi, resolve_slots

RECORDED = Path(__file__).resolve().parent / "nvidia_smi"
MiB = 1 << 20


def recorded(machine: str) -> tuple[str, str]:
    return (
        (RECORDED / f"{machine}.L.txt").read_text(encoding="utf-8"),
        (RECORDED / f"{machine}.query.txt").read_text(encoding="utf-8"),
    )


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """`machine(name)`: make `nvidia-smi` on PATH answer as that recorded machine did."""

    def use(name: str) -> None:
        """Its `-L`, and its answer to the query with MIG's field (`.query.txt`) or without
        (`.query3.txt`, drivers before R450); a recording it lacks is a refused field."""
        files = {suffix: RECORDED / f"{name}.{suffix}.txt" for suffix in ("L", "query", "query3")}
        answer = {k: f"exec cat {p}" if p.exists() else "exit 6" for k, p in files.items()}
        smi = tmp_path / "bin" / "nvidia-smi"
        smi.parent.mkdir(exist_ok=True)
        smi.write_text(
            "#!/bin/sh\n"
            f'case "$1" in -L) {answer["L"]} ;; '
            f"--query-gpu=index,uuid,memory.total,mig.mode.current) {answer['query']} ;; "
            f"--query-gpu=index,uuid,memory.total) {answer['query3']} ;; "
            "*) exit 9 ;; esac\n"
        )
        smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")

    return use


def test_one_h100() -> None:
    (gpu,) = devices_from_smi(*recorded("h100"))
    assert (gpu.id, gpu.name, gpu.memory_bytes) == ("0", "NVIDIA H100 80GB HBM3", 81559 * MiB)
    assert gpu.uuid == "GPU-6a3f2b1c-9d4e-5f60-8a7b-1c2d3e4f5a6b"


def test_eight_gpus_by_index() -> None:
    devices = devices_from_smi(*recorded("a100x8"))
    assert [d.id for d in devices] == [str(i) for i in range(8)]
    assert {d.memory_bytes for d in devices} == {81920 * MiB}


def test_mig_instances_are_slots_by_uuid_with_their_own_memory() -> None:
    devices = devices_from_smi(*recorded("mig"))
    # GPU 0: three instances; GPU 1 whole; GPU 2 in MIG mode without instances: none.
    assert [(d.id, d.memory_bytes, d.gpu_index) for d in devices] == [
        ("MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f", 20 * 10**9, "0"),
        ("MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb", 10 * 10**9, "0"),
        ("MIG-8d1e4c2a-6b3f-5a7e-9c0d-2e4f6a8b0c1d", 5 * 10**9, "0"),
        ("1", 40960 * MiB, "1"),
    ]
    assert devices[0].name == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"


def test_mig_uuids_of_drivers_before_r470() -> None:
    (instance,) = devices_from_smi(*recorded("mig_r460"))
    assert instance.id == "MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/0/0"
    assert instance.memory_bytes == 40 * 10**9


def test_without_the_query_gpus_have_no_memory_and_mig_instances_their_profile() -> None:
    listing, _ = recorded("mig")
    devices = devices_from_smi(listing, None)
    assert [d.memory_bytes for d in devices] == [20 * 10**9, 10 * 10**9, 5 * 10**9, None, None]


async def test_slots_environment_and_memory_on_a_mig_machine(machine) -> None:  # type: ignore[no-untyped-def]
    machine("mig")
    slots = share_cpus(await with_memory(await resolve_slots(None, {})), cpus=16)
    assert [(s.gpu, s.memory_bytes, s.threads) for s in slots] == [
        ("MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f", 20 * 10**9, 4),
        ("MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb", 10 * 10**9, 4),
        ("MIG-8d1e4c2a-6b3f-5a7e-9c0d-2e4f6a8b0c1d", 5 * 10**9, 4),
        ("1", 40960 * MiB, 4),
    ]
    env = slots[0].env({"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "CUDA_VISIBLE_DEVICES": "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "OMP_NUM_THREADS": "4",
    }


async def test_mixed_cards_each_slot_its_own_memory(machine) -> None:  # type: ignore[no-untyped-def]
    machine("mixed")
    slots = share_cpus(await with_memory(await resolve_slots(None, {})), cpus=8)
    assert [(s.gpu, s.memory_bytes, s.threads) for s in slots] == [
        ("0", 12288 * MiB, 2), ("1", 24564 * MiB, 2), ("2", 15360 * MiB, 2),
    ]  # fmt: skip
    # nvidia-smi's index 1 is the RTX 4090 only in PCI order, which CUDA is told to use.
    assert slots[1].env({})["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


async def test_devices_given_by_uuid_find_their_memory(machine) -> None:  # type: ignore[no-untyped-def]
    """CUDA_VISIBLE_DEVICES (or GATEQUEUE_GPUS) as UUIDs, whole or a unique prefix, and MIG
    UUIDs: the memory is found, so a job too big for the slot is refused."""
    machine("mig")
    env = {
        "CUDA_VISIBLE_DEVICES": "GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0,"
        "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb,GPU-0f1e2d3c"
    }
    slots = await with_memory(await resolve_slots(None, env))
    assert [s.memory_bytes for s in slots] == [40960 * MiB, 10 * 10**9, 40960 * MiB]
    by_config = await with_memory(await resolve_slots(("1", "GPU-5d5ba0d6-d33d")))
    assert [s.memory_bytes for s in by_config] == [40960 * MiB, None]  # a MIG GPU: not whole


async def test_one_slot_keeps_every_cpu_and_the_worker_environment_wins(machine) -> None:  # type: ignore[no-untyped-def]
    machine("h100")
    (slot,) = share_cpus(await with_memory(await resolve_slots(None, {})), cpus=16)
    assert (slot.gpu, slot.threads) == ("0", None)
    assert "OMP_NUM_THREADS" not in slot.env({})
    mine = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128", "OMP_NUM_THREADS": "3"}
    env = Slot("0", threads=8).env(mine)
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    assert env["OMP_NUM_THREADS"] == "3"
    cpu = Slot("cpu", threads=2).env({})
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and "PYTORCH_CUDA_ALLOC_CONF" not in cpu


async def test_drivers_before_mig_and_uuids_in_the_listing(machine) -> None:  # type: ignore[no-untyped-def]
    """R418: `-L` without UUIDs, and no mig.mode.current field to query."""
    machine("k80_r418")
    slots = await with_memory(await resolve_slots(None, {}))
    assert [(s.gpu, s.memory_bytes) for s in slots] == [("0", 11441 * MiB), ("1", 11441 * MiB)]

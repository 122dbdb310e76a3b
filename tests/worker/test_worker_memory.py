"""Memory on the worker's side: it advertises its slots, never claims a job too big for a
free slot (another worker's bigger slot takes it), and a real trainer that runs out of
memory under its cap ends Failed with "out of memory", the estimate and the limit."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bson import ObjectId
from worker_helpers import TINY_HP, MakeWorker, finished, insert, status_is, trainer, wait_job

from service.jobs import memory
from service.jobs.status import Status
from service.store import Store
from service.worker.gpus import Slot
from trainer.options import TrainingOptions

GiB = 1 << 30
# ~1.5 GiB estimated on the CPU (digits, 32,000 x 3 gates, batch 512)
BIG = TrainingOptions(
    gateOptimizer="softmax", gates=32000, networkLayers=3, residualLayers=0, batchSize=512,
    epochs=2, dataset="digits", grouping=10,
).model_dump()  # fmt: skip


async def test_slots_are_advertised_and_removed_on_a_clean_stop(
    store: Store, make_worker: MakeWorker
) -> None:
    worker = await make_worker(worker_id="adv", slots=[Slot("cpu", 3 * GiB)])
    live = await store.workers.live_slots()
    assert [(s.worker_id, s.gpu, s.memory_bytes) for s in live] == [("adv", "cpu", 3 * GiB)]
    worker.stop(now=True)
    await worker.stopped.wait()
    assert await store.workers.live_slots() == []


async def test_a_job_too_big_for_a_slot_waits_for_a_worker_it_fits(
    store: Store, make_worker: MakeWorker
) -> None:
    claims: dict[str, list[ObjectId]] = {"small": [], "large": []}
    env = {**os.environ, "GQ_EPOCHS": "1", "GQ_EPOCH_S": "0.05"}
    await make_worker(
        worker_id="small", slots=[Slot("cpu", 1 * GiB)], trainer_cmd=trainer("steady"), env=env,
        on_claim=lambda job: claims["small"].append(job.id),
    )  # fmt: skip
    big = await insert(store, BIG, estimate=True)  # estimated as the API does
    small = await insert(store, TINY_HP, estimate=True)
    assert (await wait_job(store, small.id, finished)).status is Status.SUCCEEDED
    current = await store.jobs.get(big.id)
    assert current is not None and current.status is Status.PENDING
    assert claims["small"] == [small.id]  # the big one was never claimed here
    await make_worker(
        worker_id="large", slots=[Slot("cpu", 8 * GiB)], trainer_cmd=trainer("steady"), env=env,
        on_claim=lambda job: claims["large"].append(job.id),
    )  # fmt: skip
    done = await wait_job(store, big.id, finished)
    assert done.status is Status.SUCCEEDED and done.worker is not None
    assert done.worker.id == "large" and claims["large"] == [big.id]
    assert claims["small"] == [small.id]


async def test_a_real_trainer_over_its_memory_cap_fails_with_out_of_memory(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    """The cap is set below what the run needs by design (no factor, 1,100 MiB: well above
    the ~760 MiB of a trainer's imports, so the cap is met in training, and far below this
    run's ~1.5 GiB)."""
    estimate = memory.estimate(BIG)
    await make_worker(
        slots=[Slot("cpu", 16 * GiB)], trainer_cmd=None, memory_limit_factor=0.0,
        memory_limit_headroom=1100 << 20,
    )  # fmt: skip
    job = await insert(store, BIG, estimate=True)
    await wait_job(store, job.id, status_is(Status.RUNNING))
    done = await wait_job(store, job.id, finished, deadline_s=120)
    assert done.status is Status.FAILED
    assert done.error is not None and done.error.startswith("out of memory: "), done.error
    assert f"estimated peak {memory.human(estimate.cpu)} on cpu" in done.error
    assert "limit 1.1 GiB (RLIMIT_DATA)" in done.error
    assert "the slot holds 16.0 GiB" in done.error
    assert done.exitCode == 71


async def test_a_trainer_killed_by_sigkill_not_by_us_is_reported_as_likely_out_of_memory(
    store: Store, make_worker: MakeWorker
) -> None:
    """What the kernel's OOM killer does, done by the trainer to itself."""
    suicide = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    await make_worker(slots=[Slot("cpu", 16 * GiB)], trainer_cmd=suicide)
    job = await insert(store, TINY_HP, estimate=True)
    done = await wait_job(store, job.id, finished)
    assert done.status is Status.FAILED and done.error is not None
    assert done.error.startswith("killed by SIGKILL, not by gatequeue: most likely out of memory")
    assert "the slot holds 16.0 GiB" in done.error

"""What a run hands back besides its files: the kept network's `result`, its `warnings`,
and `etaS` while it runs (docs/design.md, "Job fields"), through a real worker and real
trainer processes: `python -m trainer` once, the live tests' paced stand-in otherwise."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from worker_helpers import MakeWorker, finished, insert, log_text, wait_job

from service.jobs.record import Job, JobRecord
from service.jobs.status import Status
from service.store import Store
from trainer.options import TrainingOptions

ROOT = Path(__file__).resolve().parents[2]
PACED = [sys.executable, str(ROOT / "tests" / "live" / "trainers" / "paced.py")]
# Validation accuracy of this run peaks at epoch 4 of 5 (tests/trainer/test_validation.py).
PEAKS_EARLY = TrainingOptions(
    gateOptimizer="softmax", gates=200, networkLayers=2, groupSumTau=10.0, learningRate=0.05,
    epochs=5, residualLayers=0, gateEstimator="soft",
).model_dump()  # fmt: skip


async def test_the_downloaded_network_is_the_kept_epochs(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    await make_worker()  # python -m trainer
    job = await insert(store, PEAKS_EARLY)
    done = await wait_job(store, job.id, finished, deadline_s=300)
    assert done.status is Status.SUCCEEDED, (done.error, (await log_text(store, job.id))[-20:])
    assert done.result is not None and done.etaS is None
    epochs = await store.metrics.list(job.id)
    assert done.result.epoch == 4 < len(epochs) == 5
    assert done.result.val_acc_discrete == epochs[3]["val_acc_discrete"]
    last = epochs[-1]["test_acc_discrete"]

    art = next(a for a in done.artifacts if a.name == "network.json")
    stream = await store.files.open(art.bucket, art.fileId)
    network = tmp_path / "network.json"
    network.write_bytes(await stream.read())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trainer.evaluate", str(network), "--data-dir", str(ROOT / "data"),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0
    assert f"test_acc_discrete={done.result.test_acc_discrete:.4f}" in out
    assert f"test_acc_discrete={last:.4f}" not in out


async def test_a_collapsed_run_succeeds_with_its_warning_and_its_eta_falls(
    store: Store, make_worker: MakeWorker
) -> None:
    await make_worker(trainer_cmd=PACED, env={**os.environ, "GQ_EPOCH_S": "0.3"})
    hp = {**PEAKS_EARLY, "seed": 13, "networkLayers": 2, "epochs": 4}  # seed 13 collapses
    job = await insert(store, hp)
    etas: list[float] = []

    def running_eta(record: JobRecord) -> bool:
        if record.status is Status.RUNNING and record.etaS is not None:
            if not etas or etas[-1] != record.etaS:
                etas.append(record.etaS)
        return record.finished

    done = await wait_job(store, job.id, running_eta, deadline_s=60)
    assert done.status is Status.SUCCEEDED and done.etaS is None
    assert len(etas) == 4 and etas == sorted(etas, reverse=True), etas
    assert done.result is not None and done.result.epoch == 4
    assert done.result.test_acc_discrete == 0.15
    assert [w.code for w in done.warnings] == ["discretization_gap", "collapsed"]
    assert "1 of 400 gates are live" in done.warnings[1].message
    lines = await log_text(store, job.id)
    assert any(line.startswith("warning (collapsed): the network collapsed") for line in lines)
    assert Job.from_doc(done.to_doc()).to_json()["warnings"][1]["code"] == "collapsed"


async def test_a_healthy_run_has_no_warnings(store: Store, make_worker: MakeWorker) -> None:
    await make_worker(trainer_cmd=PACED, env={**os.environ, "GQ_EPOCH_S": "0.01"})
    job = await insert(store, {**PEAKS_EARLY, "epochs": 2})
    done = await wait_job(store, job.id, finished, deadline_s=60)
    assert done.status is Status.SUCCEEDED
    assert done.warnings == [] and done.result is not None and done.result.epoch == 2

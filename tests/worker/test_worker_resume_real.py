"""The real trainer through real workers: a worker killed with SIGKILL after epoch 5, the
job re-queued when its lease runs out and resumed by another worker from the checkpoint,
ends with the very metrics and network.json of a run that never stopped (on CPU, where
the computation repeats bit for bit; docs/trainer.md "Checkpoints and resume")."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import MakeWorker, finished, insert, log_text, wait_job

from service.store import Store
from trainer.options import TrainingOptions, trainer_args

pytestmark = pytest.mark.slow  # two trainer runs of 20 short epochs, about 40 s

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 20
HP: dict[str, Any] = TrainingOptions(
    gateOptimizer="gumbel_softmax", noiseTemp=1.0, gates=2000, networkLayers=2,
    residualLayers=0, groupSumTau=10, learningRate=0.05, batchSize=64, epochs=EPOCHS,
    seed=3, dataset="digits", grouping=10,
).model_dump()  # fmt: skip
TIMING = {"epoch_s", "step_ms", "total_s", "ts", "jobId", "attemptId"}
TIMING_IN_JSON = re.compile(r'"(?:epoch_s|step_ms|total_s)": ?[-+0-9.eE]+')


def _untimed(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def _reference(tmp_path: Path) -> tuple[list[dict[str, Any]], str]:
    """The run that never stopped: per-epoch metrics and network.json (timings blanked)."""
    out = tmp_path / "reference"
    done = subprocess.run(
        [sys.executable, "-m", "trainer", *trainer_args(HP), "--output-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = []
    for line in done.stdout.splitlines():
        if line.startswith("EPOCH "):
            head, *pairs = line.split()[1:]
            epoch, epochs = head.split("/")
            values = {k: float(v) for k, v in (p.split("=", 1) for p in pairs)}
            rows.append(_untimed({"epoch": int(epoch), "epochs": int(epochs), **values}))
    return rows, TIMING_IN_JSON.sub("T", (out / "network.json").read_text())


async def test_sigkill_after_epoch_5_resumes_to_the_same_network(
    store: Store, make_worker: MakeWorker, mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    reference = asyncio.get_running_loop().run_in_executor(None, _reference, tmp_path)
    env = {
        **os.environ, "MONGODB_URI": mongo_uri, "GATEQUEUE_DB": db_name,
        "GATEQUEUE_LEASE_S": "4", "GATEQUEUE_DATA_DIR": str(tmp_path / "victim"),
        "GATEQUEUE_LOG_FORMAT": "json",
    }  # fmt: skip
    log = os.open(tmp_path / "victim.log", os.O_WRONLY | os.O_CREAT, 0o644)
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.worker", "--gpus", "cpu", "--worker-id", "victim",
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    os.close(log)
    try:
        job = await insert(store, HP, checkpointIntervalS=0.0)
        await wait_job(
            store, job.id, lambda j: j.checkpoint is not None and j.checkpoint.epoch >= 5,
            deadline_s=120,
        )  # fmt: skip
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and its trainer, no goodbye
        await victim.wait()
    finally:
        if victim.returncode is None:
            os.killpg(victim.pid, signal.SIGKILL)
            await victim.wait()
    killed = await store.jobs.get(job.id)
    assert killed is not None and killed.checkpoint is not None
    assert killed.status == "Running" and killed.checkpoint.epoch < EPOCHS
    saved = killed.checkpoint

    await make_worker(worker_id="heir", trainer_cmd=None, lease_s=4.0)
    done = await wait_job(store, job.id, finished, deadline_s=180)
    assert done.status == "Succeeded", await log_text(store, job.id)
    assert done.attempt == 2
    assert done.resumedFrom is not None and done.resumedFrom.epoch == saved.epoch
    lines = await log_text(store, job.id)
    assert f"resumed from epoch {saved.epoch} (checkpoint of attempt {saved.attemptId[:8]})" in (
        lines
    )

    ref_rows, ref_network = await reference
    stored = [_untimed(m) for m in await store.metrics.list(job.id)]
    assert stored == ref_rows  # every epoch once, each with the uninterrupted run's numbers
    artifact = next(a for a in done.artifacts if a.name == "network.json")
    grid_out = await store.files.open(artifact.bucket, artifact.fileId)
    network = (await grid_out.read()).decode()
    assert TIMING_IN_JSON.sub("T", network) == ref_network
    metrics = json.loads(network)["metrics"]  # the kept epoch's (docs/trainer.md)
    kept = ref_rows[metrics["kept_epoch"] - 1]
    assert round(metrics["test_acc_discrete"], 4) == kept["test_acc_discrete"]  # 4 places
    assert done.result is not None and done.result.epoch == metrics["kept_epoch"]
    assert done.result.test_acc_discrete == kept["test_acc_discrete"]

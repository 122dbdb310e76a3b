"""The one controller of a sweep under faults: a worker SIGKILLed in the middle of a decision
(its compare-and-set on the sweep applied, the reply held at the wire, nothing acted on yet)
and a decision whose reply was lost (the wire-level proxy). Either way no run is promoted
twice, no run is lost, no trial number is used twice and `trials` is never exceeded; a
promoted run resumes from its checkpoint and no epoch is trained twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_worker_schedulers import GATES, expected_asha, ledger_epochs, make, quality, sweep_done
from wire_proxy import WireProxy
from worker_helpers import MakeWorker, trainer

from service.jobs.status import Status
from service.store import Store
from service.sweeps.lifecycle import tidy
from service.sweeps.record import SweepRecord

REPO = Path(__file__).resolve().parents[2]
ASHA = {"type": "asha", "minEpochs": 1, "reductionFactor": 2}


def _sweep_push(field: str) -> Callable[[dict[str, Any]], bool]:
    """The controller's compare-and-set that records a decision (`decisions`) or a trial
    (`asked`) on the sweep document (SweepStore.decide)."""

    def match(body: dict[str, Any]) -> bool:
        updates = body.get("updates") or [{}]
        return (
            body.get("update") == "sweeps"
            and "controlVersion" in updates[0].get("q", {})
            and field in updates[0].get("u", {}).get("$push", {})
        )

    return match


is_decision = _sweep_push("decisions")
is_ask = _sweep_push("asked")


async def _asha_sweep(store: Store) -> SweepRecord:
    return await make(store, grid={"gates": GATES[:6]}, maxParallel=1, scheduler=ASHA)


async def _random_sweep(store: Store) -> SweepRecord:
    return await make(
        store, grid={"gates": GATES}, search={"type": "random", "trials": 4, "seed": 5},
        scheduler=ASHA, maxParallel=1,
    )  # fmt: skip


async def _check(store: Store, sweep: SweepRecord, ledger: Path) -> None:
    """Every run finished once, none promoted twice, no epoch trained twice, `trials` kept."""
    total = 6 if sweep.search is None else 4
    rows = await sweep_done(store, sweep.id, total, deadline_s=90)
    stored = await store.sweeps.get(sweep.id)
    assert stored is not None
    assert sorted(r["sweepIndex"] for r in rows) == list(range(total))
    assert all(r["status"] == Status.SUCCEEDED.value for r in rows), rows
    keys = [(d.jobId, d.epoch) for d in stored.decisions]
    assert len(keys) == len(set(keys)), "a run was decided on twice"
    trained = ledger_epochs(ledger)
    for row in rows:
        epochs = trained[str(row["_id"])]
        assert epochs == list(range(1, len(epochs) + 1)), (row["_id"], epochs)  # none twice
        stop = row["stoppedEarly"]["epoch"] if row.get("stoppedEarly") else 4
        assert epochs[-1] == stop
        promoted = [d for d in stored.decisions if d.jobId == row["_id"] and d.promote]
        assert len(promoted) == len([e for e in (1, 2) if e < stop])
    if sweep.search is None:
        want = expected_asha([quality(g) for g in GATES[:6]], 2, [1, 2], 4)
        assert {r["sweepIndex"]: (r["stoppedEarly"] or {}).get("epoch", 4) for r in rows} == want
    else:
        assert [a.trial for a in stored.asked] == list(range(4))
        slots = await store.jobs.collection.distinct("sweepSlot", {"sweepId": sweep.id})
        assert len(slots) == 4


@pytest.mark.parametrize(
    ("make_sweep", "held"),
    [(_asha_sweep, is_decision), (_random_sweep, is_ask)],
    ids=["killed-after-a-rung-decision", "killed-after-asking-a-trial"],
)
async def test_a_controller_killed_mid_decision(
    store: Store, make_worker: MakeWorker, mongo_uri: str, db_name: str, tmp_path: Path,
    make_sweep: Callable[[Store], Any], held: Callable[[dict[str, Any]], bool],
) -> None:  # fmt: skip
    """The victim, a real worker process, stores a decision (a promotion, or a new trial) and
    is SIGKILLed before it acts on it: its reply is held at the wire. The heir and the tidier
    (every API process runs it) act on the stored decision instead of making another."""
    ledger = tmp_path / "ledger"
    sweep = await make_sweep(store)
    async with WireProxy.for_uri(mongo_uri) as proxy:
        hold = proxy.delay(3600, where=held)
        env = {
            **os.environ, "MONGODB_URI": proxy.uri(), "GATEQUEUE_DB": db_name,
            "GATEQUEUE_DATA_DIR": str(tmp_path / "victim"), "GATEQUEUE_LOG_FORMAT": "json",
            "GATEQUEUE_LEASE_S": "2", "GQ_TEST_LEDGER": str(ledger),
        }  # fmt: skip
        victim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.worker", "--gpus", "cpu", "--worker-id", "victim",
            "--trainer", " ".join(trainer("rungs")), cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            async with asyncio.timeout(60):
                await hold.fired.wait()
        finally:
            os.killpg(victim.pid, signal.SIGKILL)
            await victim.wait()
    stored = await store.sweeps.get(sweep.id)
    assert stored is not None
    if held is is_decision:  # recorded, not applied: the run is still Running, its lease lapsing
        assert [d.promote for d in stored.decisions] == [True]
        job = await store.jobs.get(stored.decisions[0].jobId)
        assert job is not None and job.status is Status.RUNNING and job.targetEpoch == 1
    else:  # asked, its run not made
        assert len(stored.asked) == 2
        assert len(await store.jobs.sweep_rows(sweep.id)) == 1
    await make_worker(
        worker_id="heir", trainer_cmd=trainer("rungs"), lease_s=2.0,
        env={"GQ_TEST_LEDGER": str(ledger)},
    )  # fmt: skip
    if held is is_ask:
        assert (await tidy(store)) == (0, 0)  # the API's minutely pass makes the lost trial
        assert len(await store.jobs.sweep_rows(sweep.id)) == 2
    await _check(store, sweep, ledger)


@pytest.mark.parametrize(
    ("make_sweep", "lost"),
    [(_asha_sweep, is_decision), (_random_sweep, is_ask)],
    ids=["rung-decision", "new-trial"],
)
async def test_a_decision_whose_reply_was_lost_is_settled_by_reading_it_back(
    store: Store, make_worker: MakeWorker, mongo_uri: str, tmp_path: Path,
    make_sweep: Callable[[Store], Any], lost: Callable[[dict[str, Any]], bool],
) -> None:  # fmt: skip
    """The decision is applied, its answer never delivered and the server unreachable for
    longer than the driver's own retry waits: the controller reads the sweep back and finds
    its decision (or another's), never making a second one."""
    ledger = tmp_path / "ledger"
    sweep = await make_sweep(store)
    async with WireProxy.for_uri(mongo_uri) as proxy:
        fault = proxy.lose_reply("update", where=lost, then_refuse=3.0)
        await make_worker(
            uri=proxy.uri(serverSelectionTimeoutMS=1000), trainer_cmd=trainer("rungs"),
            lease_s=10.0, renew_every_s=0.5, env={"GQ_TEST_LEDGER": str(ledger)},
        )  # fmt: skip
        await _check(store, sweep, ledger)
        assert fault.hits == 1

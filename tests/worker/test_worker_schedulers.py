"""Sweep schedulers and searches through real workers and a stand-in trainer whose metric is
a known function of its options (trainers/rungs.py): ASHA promotes exactly the runs its rule
says, each resumed from its checkpoint (epochs continue, none trained twice); the median rule
stops the runs below the others; a TPE search asks deterministically and is told finished
runs; `trials` is never exceeded."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from worker_helpers import TINY_HP, MakeWorker, status_is, trainer, wait_job

from service.jobs.status import Status
from service.store import Store
from service.sweeps import controller
from service.sweeps.lifecycle import create_sweep
from service.sweeps.record import SweepRecord
from service.sweeps.spec import SweepRequest, plan

GATES = [40, 50, 60, 70, 80, 90, 100, 110]  # quality (g*37 % 100)/100: 0.8 0.5 0.2 0.9 ...


def quality(gates: int) -> float:
    return (gates * 37 % 100) / 100


async def make(store: Store, **spec: Any) -> SweepRecord:
    base = {k: v for k, v in TINY_HP.items() if k != "seed"}
    body = {"base": {**base, "epochs": 4}, **spec}
    made = await create_sweep(
        store, plan(SweepRequest.model_validate(body), max_jobs=1000), submitted_by=None
    )
    return made.sweep


async def sweep_done(
    store: Store, sweep_id: Any, jobs: int, deadline_s: float = 120.0
) -> list[dict[str, Any]]:
    """The sweep's job documents once `jobs` of them exist and all are finished (followed by
    its change events)."""
    import asyncio

    async with asyncio.timeout(deadline_s):
        async with await store.jobs.collection.watch([], full_document="updateLookup") as stream:
            while True:
                rows = await store.jobs.sweep_rows(sweep_id)
                if len(rows) >= jobs and all(Status(r["status"]).finished for r in rows):
                    return rows
                await stream.next()


def ledger_epochs(path: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        job, epoch = line.split()
        out.setdefault(job, []).append(int(epoch))
    return out


def expected_asha(values_in_order: list[float], eta: int, rungs: list[int], epochs: int
                  ) -> dict[int, int]:  # fmt: skip
    """What ASHA must do with runs arriving one at a time (maxParallel 1, claim order: a
    promoted run is the oldest Pending one, so it goes on before the next run starts):
    {run: the epoch it stops at}. An independent copy of the rule: numpy's percentile."""
    import numpy as np

    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    out = {}
    for run, q in enumerate(values_in_order):
        stop = epochs
        for r in rungs:
            v = q * (0.5 + 0.5 * r / epochs)
            recorded[r].append(v)
            if v < np.percentile(recorded[r], (1 - 1 / eta) * 100):
                stop = r
                break
        out[run] = stop
    return out


async def test_asha_promotes_exactly_the_top_runs_from_their_checkpoints(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    await make_worker(trainer_cmd=trainer("rungs"), env={"GQ_TEST_LEDGER": str(ledger)})
    sweep = await make(
        store,
        grid={"gates": GATES},
        maxParallel=1,
        scheduler={"type": "asha", "minEpochs": 1, "reductionFactor": 2},
    )
    rows = await sweep_done(store, sweep.id, len(GATES))
    want = expected_asha([quality(g) for g in GATES], 2, [1, 2], 4)
    trained = ledger_epochs(ledger)
    stored = await store.sweeps.get(sweep.id)
    assert stored is not None
    for row in sorted(rows, key=lambda r: r["sweepIndex"]):
        job = await store.jobs.get(row["_id"])
        assert job is not None and job.status is Status.SUCCEEDED, job.error if job else row
        stop = want[row["sweepIndex"]]
        # epochs continue across promotions: 1..stop, each once
        assert trained[str(job.id)] == list(range(1, stop + 1)), (row["sweepIndex"], trained)
        decisions = [d for d in stored.decisions if d.jobId == job.id]
        assert len({d.epoch for d in decisions}) == len(decisions)  # never decided twice
        if stop < 4:
            assert job.stoppedEarly is not None and job.stoppedEarly.epoch == stop
            assert job.stoppedEarly.rung == [1, 2].index(stop)
            assert job.circuit is None and job.artifacts == []
            assert job.checkpoint is not None and job.checkpoint.epoch == stop
            assert [d.promote for d in decisions][-1] is False
        else:
            assert job.stoppedEarly is None and job.targetEpoch is None
            assert [d.promote for d in decisions] == [True, True]
            assert any(a.name == "network.json" for a in job.artifacts)
            assert job.resumedFrom is not None and job.resumedFrom.epoch == 2
    assert sorted(want.values()) != [4] * len(GATES)  # the rule did stop some
    assert sorted(want.values()) != [1] * len(GATES)


async def test_median_stops_runs_below_the_others(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    # Epochs long enough for the stop to land before the run's end.
    await make_worker(trainer_cmd=trainer("rungs"), env={"GQ_EPOCH_S": "0.4"})
    sweep = await make(
        store,
        grid={"gates": GATES[:5]},
        maxParallel=1,
        scheduler={"type": "median", "graceEpochs": 2},
    )
    rows = await sweep_done(store, sweep.id, 5)
    by_index = {r["sweepIndex"]: r for r in rows}
    # One at a time: runs 0 and 1 have fewer than two others; from run 2 on, a run whose
    # value at epoch 2 is below the median of the earlier ones' is stopped there.
    for i in range(5):
        earlier = sorted(quality(g) for g in GATES[:i])
        q = quality(GATES[i])
        below = len(earlier) >= 2 and q < _median(earlier)
        stopped = by_index[i].get("stoppedEarly")
        assert by_index[i]["status"] == Status.SUCCEEDED.value
        assert (stopped is not None) == below, (i, q, earlier, stopped)
        if stopped:
            assert stopped["epoch"] >= 2 and "median" in stopped["reason"]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


async def _tpe_asks(store: Store, make_worker: MakeWorker) -> list[dict[str, Any]]:
    sweep = await make(
        store,
        space={"gates": {"intUniform": [40, 140]}, "learningRate": {"logUniform": [0.001, 0.1]}},
        search={"type": "tpe", "trials": 6, "seed": 7},
        maxParallel=1,
    )
    rows = await sweep_done(store, sweep.id, 6)
    stored = await store.sweeps.get(sweep.id)
    assert stored is not None and len(rows) == 6 and len(stored.asked) == 6
    assert sorted(a.trial for a in stored.asked) == list(range(6))
    return [a.params for a in stored.asked]


async def test_tpe_asks_are_deterministic_and_told_finished_runs(
    store: Store, make_worker: MakeWorker
) -> None:
    await make_worker(trainer_cmd=trainer("rungs"))
    first = await _tpe_asks(store, make_worker)
    second = await _tpe_asks(store, make_worker)
    assert first == second
    # Told: trial 5 is asked of a study that knows trials 0..4 (maxParallel 1), so asking
    # with another history gives another answer.
    stored = (await store.sweeps.list(limit=1))[0]
    rows = await store.jobs.sweep_rows(stored.id)
    told = controller._told(stored, rows)
    assert len(told) == 6 and all(t.value is not None and t.complete for t in told)
    tpe = stored.search or {}
    from service.sweeps.search import ask_tpe

    again = ask_tpe(stored.space, told[:5], seed=tpe["seed"], trial=5, trials=6,
                    lower_is_better=False)  # fmt: skip
    assert again == first[5]
    blind = ask_tpe(stored.space, [], seed=tpe["seed"], trial=5, trials=6, lower_is_better=False)
    assert blind != first[5]


async def test_random_search_with_asha_and_seeds_never_exceeds_trials(
    store: Store, make_worker: MakeWorker
) -> None:
    await make_worker(trainer_cmd=trainer("rungs"), slots=["cpu", "cpu"])
    sweep = await make(
        store,
        grid={"gates": GATES},
        search={"type": "random", "trials": 5, "seed": 3},
        scheduler={"type": "asha", "minEpochs": 1, "reductionFactor": 3},
        seeds=2,
        maxParallel=4,
    )
    rows = await sweep_done(store, sweep.id, 10)
    assert len(rows) == 10
    assert sorted(r["sweepIndex"] for r in rows) == list(range(10))
    stored = await store.sweeps.get(sweep.id)
    assert stored is not None and len(stored.asked) == 5
    assert await controller.fill(store, sweep.id) == 0
    assert len(await store.jobs.sweep_rows(sweep.id)) == 10
    assert math.isfinite(sum(r["latestMetrics"]["val_acc_discrete"] for r in rows))


async def test_cancelling_a_searching_sweep_stops_its_controller_and_every_run(
    store: Store, make_worker: MakeWorker
) -> None:
    from service.sweeps.lifecycle import cancel_sweep, tidy

    await make_worker(trainer_cmd=trainer("rungs"), env={"GQ_EPOCH_S": "0.3"}, slots=["0", "1"])
    sweep = await make(
        store, grid={"gates": GATES}, search={"type": "tpe", "trials": 8, "seed": 2},
        scheduler={"type": "asha", "minEpochs": 1, "reductionFactor": 2}, maxParallel=2,
    )  # fmt: skip
    first = (await store.jobs.sweep_rows(sweep.id))[0]["_id"]
    await wait_job(store, first, status_is(Status.RUNNING))
    assert await cancel_sweep(store, sweep.id) is not None
    rows = await sweep_done(store, sweep.id, 1)
    asked = len((await store.sweeps.get(sweep.id)).asked)  # type: ignore[union-attr]
    assert asked < 8
    assert all(r["status"] in ("Cancelled", "Succeeded") for r in rows)
    assert any(r["status"] == "Cancelled" for r in rows)
    await tidy(store)  # the tidier makes no trial for a cancelled sweep
    assert await controller.fill(store, sweep.id) == 0
    after = await store.sweeps.get(sweep.id)
    assert after is not None and len(after.asked) == asked
    assert len(await store.jobs.sweep_rows(sweep.id)) == len(rows)

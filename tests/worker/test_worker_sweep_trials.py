"""The trials of a random or TPE search against what happens beside them: a cancel or a
delete that lands while a controller inserts a trial's run, a run removed after its trial
was made, and the sweep's end as a webhook sees it between two trials."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from worker_helpers import TINY_HP

from service.jobs.status import Status
from service.store import Store
from service.sweeps import controller
from service.sweeps.lifecycle import cancel_sweep, create_sweep, delete_sweep, tidy
from service.sweeps.record import SweepRecord, stats_of, summarize
from service.sweeps.spec import SweepRequest, plan
from service.webhooks.dispatcher import Dispatcher
from service.webhooks.targets import AllowList

GATES = [40, 50, 60, 70, 80, 90, 100, 110]


async def random_sweep(store: Store, trials: int, max_parallel: int, **extra: Any) -> SweepRecord:
    base = {k: v for k, v in TINY_HP.items() if k != "seed"}
    body = {"base": {**base, "epochs": 4}, "grid": {"gates": GATES}, "maxParallel": max_parallel,
            "search": {"type": "random", "trials": trials, "seed": 1}, **extra}  # fmt: skip
    made = await create_sweep(
        store, plan(SweepRequest.model_validate(body), max_jobs=1000), submitted_by=None
    )
    return made.sweep


async def finish(store: Store, job_id: ObjectId, status: Status = Status.SUCCEEDED) -> None:
    """A run's end as its worker writes it (the worker itself is not what is tested here)."""
    await store.jobs.collection.update_one(
        {"_id": job_id},
        {"$set": {"status": status.value,
                  "latestMetrics": {"epoch": 4, "val_acc_discrete": 0.5}},
         "$currentDate": {"finishedAt": True}},
    )  # fmt: skip


async def view(store: Store, sweep_id: ObjectId) -> dict[str, Any]:
    sweep = await store.sweeps.get(sweep_id)
    assert sweep is not None
    return summarize(sweep, stats_of(await store.jobs.sweep_rows(sweep_id)))


async def fill_with(store: Store, sweep_id: ObjectId, beside: Any) -> None:
    """The controller's pass, with `beside` run by the API just before its first insert:
    after the controller read the sweep, before its run exists."""
    real, fired = store.jobs.insert_trial, []

    async def insert(doc: dict[str, Any]) -> bool:
        if not fired:
            fired.append(await beside(store, sweep_id))
        return await real(doc)

    store.jobs.insert_trial = insert  # type: ignore[method-assign]
    try:
        await controller.fill(store, sweep_id)
    finally:
        store.jobs.insert_trial = real  # type: ignore[method-assign]
    assert fired


async def test_a_cancel_during_a_trials_insert_cancels_its_run(store: Store) -> None:
    sweep = await random_sweep(store, trials=3, max_parallel=1)
    assert sweep.id in await store.sweeps.adaptive_active()  # two trials to make
    (first,) = await store.jobs.sweep_rows(sweep.id)
    await finish(store, first["_id"])
    await fill_with(store, sweep.id, cancel_sweep)
    rows = await store.jobs.sweep_rows(sweep.id)
    assert [r["status"] for r in rows] == ["Succeeded", "Cancelled"]
    shown = await view(store, sweep.id)
    assert shown["status"] == "Cancelled" and shown["remaining"] == 0


async def test_a_delete_during_a_trials_insert_leaves_no_run(store: Store) -> None:
    sweep = await random_sweep(store, trials=3, max_parallel=1)
    (first,) = await store.jobs.sweep_rows(sweep.id)
    await finish(store, first["_id"])
    await fill_with(store, sweep.id, delete_sweep)
    assert await store.sweeps.get(sweep.id) is None
    assert await store.jobs.collection.count_documents({"sweepId": sweep.id}) == 0


async def test_a_removed_run_of_a_made_trial_is_not_made_again(store: Store) -> None:
    sweep = await random_sweep(store, trials=2, max_parallel=2)
    assert sweep.id not in await store.sweeps.adaptive_active()  # every trial made
    failed, ok = await store.jobs.sweep_rows(sweep.id)
    await finish(store, failed["_id"], Status.FAILED)
    await finish(store, ok["_id"])
    assert (await view(store, sweep.id))["status"] == "Finished"
    await store.removal.jobs([failed["_id"]])  # DELETE /jobs/{id}, or retention of a Failed run
    await tidy(store)
    assert [r["sweepIndex"] for r in await store.jobs.sweep_rows(sweep.id)] == [1]
    assert (await view(store, sweep.id))["status"] == "Finished"


async def test_the_sweeps_end_is_told_once_every_trial_is_made_and_finished(store: Store) -> None:
    notify = {"url": "http://hooks.test/x", "events": ["finished"]}
    sweep = await random_sweep(store, trials=2, max_parallel=1, notify=notify)
    (first,) = await store.jobs.sweep_rows(sweep.id)
    await finish(store, first["_id"])
    started: list[Any] = []
    hooks = Dispatcher(store, allow=AllowList.parse(["hooks.test"]))
    hooks._start = started.append  # type: ignore[method-assign]  # record, do not send
    await hooks._record_sweep(sweep.id)  # before the worker's settle made the next trial
    assert started == [] and (await view(store, sweep.id))["status"] == "Active"
    await controller.fill(store, sweep.id)
    (_, second) = await store.jobs.sweep_rows(sweep.id)
    await finish(store, second["_id"])
    await hooks._record_sweep(sweep.id)
    assert [(d.kind, d.event) for d in started] == [("sweep", "succeeded")]

"""POST /sweeps and the sweep views: validation of every combination before anything is
stored, all-or-nothing creation, idempotent retries, listing, best run, cancel."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from api_helpers import JSON, SEED_BODY, MakeApi, error_of, job_count
from bson import ObjectId

from service.jobs.status import Status
from service.store import Store
from service.sweeps.lifecycle import tidy
from service.sweeps.record import SweepRecord
from trainer.parametrizations import REGISTRY

BASE: dict[str, Any] = {
    "gateOptimizer": "softmax",
    "gates": 1000,
    "networkLayers": 2,
    "grouping": 10,
    "groupSumTau": 30,
    "residualLayers": 0,
    "epochs": 3,
}


def grid_body(**extra: Any) -> dict[str, Any]:
    return {
        "name": "g",
        "base": BASE,
        "grid": {"gates": [1000, 2000, 4000], "gateOptimizer": ["softmax", "entmax"]},
        **extra,
    }


async def post(api: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return await api.post("/sweeps", json=body, headers={**JSON, **headers})


async def test_grid_creates_every_combination_in_order(api: TestClient, store: Store) -> None:
    resp = await post(api, grid_body(maxParallel=2, priority=5))
    assert resp.status == 201, await resp.text()
    sweep = await resp.json()
    assert resp.headers["Location"] == f"/sweeps/{sweep['id']}"
    assert sweep["total"] == 6 and sweep["remaining"] == 6 and sweep["status"] == "Active"
    assert sweep["varying"] == ["gates", "gateOptimizer"]
    assert sweep["counts"]["Pending"] == 6 and sweep["best"] is None
    assert [(r["index"], r["options"]) for r in sweep["jobs"]] == [
        (0, {"gates": 1000, "gateOptimizer": "softmax"}),
        (1, {"gates": 1000, "gateOptimizer": "entmax"}),
        (2, {"gates": 2000, "gateOptimizer": "softmax"}),
        (3, {"gates": 2000, "gateOptimizer": "entmax"}),
        (4, {"gates": 4000, "gateOptimizer": "softmax"}),
        (5, {"gates": 4000, "gateOptimizer": "entmax"}),
    ]
    docs = await store.jobs.collection.find({}).sort("sweepIndex", 1).to_list(None)
    assert len(docs) == 6
    for doc in docs:
        assert str(doc["sweepId"]) == sweep["id"]
        assert doc["priority"] == 5 and doc["sweepMaxParallel"] == 2
        assert "held" not in doc  # let go once the whole sweep was stored
        assert doc["status"] == Status.PENDING.value
    assert docs[3]["hyperparameters"]["gates"] == 2000
    assert docs[3]["hyperparameters"]["gateOptimizer"] == "entmax"
    assert docs[3]["name"] == "g #3 gates=2000 gateOptimizer=entmax"
    # GET /jobs?sweep= lists exactly them
    listed = await (await api.get(f"/jobs?sweep={sweep['id']}&limit=100")).json()
    assert sorted(j["id"] for j in listed["jobs"]) == sorted(j["id"] for j in sweep["jobs"])


async def test_a_null_learning_rate_is_each_runs_own_gate_optimizers(
    api: TestClient, store: Store
) -> None:
    """A sweep's runs store the learning rate they use, as a job does (a stored null reached
    the trainer as `--learning-rate None` and every run failed on its flags)."""
    body = grid_body(grid={"gateOptimizer": ["softmax", "gumbel_softmax", "log_softmax"]})
    resp = await post(api, body)
    assert resp.status == 201, await resp.text()
    docs = await store.jobs.collection.find({}).sort("sweepIndex", 1).to_list(None)
    assert [d["hyperparameters"]["learningRate"] for d in docs] == [
        REGISTRY[name].learning_rate for name in ("softmax", "gumbel_softmax", "log_softmax")
    ]
    assert len({d["hyperparameters"]["learningRate"] for d in docs}) == 3


async def test_an_invalid_combination_is_a_422_naming_it_and_nothing_is_stored(
    api: TestClient, store: Store
) -> None:
    # grouping 10 needs gates >= 10: the combination gates=5 breaks a rule between options
    body = grid_body()
    body["grid"] = {"gates": [1000, 5], "gateOptimizer": ["softmax", "entmax"]}
    err = await error_of(await post(api, body), 422, "invalid_combination")
    assert err["combination"]["index"] == 2
    assert err["combination"]["values"] == {"gates": 5, "gateOptimizer": "softmax"}
    assert [f["field"] for f in err["fields"]] == ["gates"]
    assert "combination 2 (gates=5, gateOptimizer='softmax')" in err["message"]
    assert "and 1 more of 4" in err["message"]
    assert [c["index"] for c in err["combinations"]] == [2, 3]
    assert await job_count(store) == 0
    assert await store.sweeps.collection.count_documents({}) == 0


async def test_bad_values_of_one_run_and_unknown_options(api: TestClient, store: Store) -> None:
    # a value no job may have is named where the body lists it
    body = {"base": BASE, "runs": [{"gates": 2000}, {"gateOptimizer": "nope"}]}
    err = await error_of(await post(api, body), 422, "validation_error")
    assert [f["field"] for f in err["fields"]] == ["runs.1.gateOptimizer"]
    assert err["message"] == "invalid values: runs.1.gateOptimizer"
    err = await error_of(await post(api, {"base": BASE, "grid": {"gatez": [1]}}), 422)
    assert "grid.gatez: unknown option" in str(err)
    err = await error_of(
        await post(
            api, {"base": BASE, "random": {"n": 2, "space": {"gates": {"uniform": [1, 2]}}}}
        ),
        422,
    )
    assert "use intUniform" in str(err)
    err = await error_of(await post(api, {"base": BASE}), 422, "sweep_empty")
    assert await job_count(store) == 0


async def test_more_than_max_sweep_is_a_422(make_api: MakeApi, store: Store) -> None:
    api = await make_api(max_sweep=5)
    err = await error_of(await post(api, grid_body()), 422, "sweep_too_large")
    assert "names 6 jobs; at most 5" in err["message"]
    assert await job_count(store) == 0


async def test_grid_times_runs_plus_random_samples(api: TestClient) -> None:
    body = {
        "base": BASE,
        "grid": {"gates": [1000, 2000]},
        "runs": [{"learningRate": 0.01}, {"learningRate": 0.05}],
        "random": {
            "n": 3,
            "seed": 7,
            "space": {
                "learningRate": {"logUniform": [1e-3, 1e-1]},
                "networkLayers": {"intUniform": [1, 3]},
                "gateOptimizer": {"choice": ["softmax", "entmax"]},
            },
        },
    }
    resp = await post(api, body)
    assert resp.status == 201, await resp.text()
    sweep = await resp.json()
    assert sweep["total"] == 2 * 2 + 3
    opts = [r["options"] for r in sweep["jobs"]]
    assert opts[0]["gates"] == 1000 and opts[0]["learningRate"] == 0.01
    assert opts[3]["gates"] == 2000 and opts[3]["learningRate"] == 0.05
    for sample in opts[4:]:
        assert 1e-3 <= sample["learningRate"] <= 1e-1
        assert sample["networkLayers"] in (1, 2, 3)
    # the same seed, the same samples
    again = await (await post(api, body)).json()
    assert [r["options"] for r in again["jobs"]] == opts


async def test_idempotency_key_replays_the_sweep(api: TestClient, store: Store) -> None:
    first = await post(api, grid_body(), **{"Idempotency-Key": "sweep-1"})
    assert first.status == 201
    replay = await post(api, grid_body(), **{"Idempotency-Key": "sweep-1"})
    assert replay.status == 200
    assert (await replay.json())["id"] == (await first.json())["id"]
    assert await job_count(store) == 6
    other = grid_body(name="other")
    await error_of(
        await post(api, other, **{"Idempotency-Key": "sweep-1"}), 409, "idempotency_key_reused"
    )
    assert await job_count(store) == 6


async def finish(store: Store, job_id: str, status: Status, metrics: dict[str, float]) -> None:
    await store.jobs.collection.update_one(
        {"_id": ObjectId(job_id)},
        {"$set": {"status": status.value, "latestMetrics": metrics},
         "$currentDate": {"finishedAt": True}},
    )  # fmt: skip


async def test_best_is_the_job_with_the_highest_metric(api: TestClient, store: Store) -> None:
    sweep = await (await post(api, grid_body(metric="test_acc_discrete"))).json()
    jobs = sweep["jobs"]
    await finish(store, jobs[0]["id"], Status.SUCCEEDED, {"test_acc_discrete": 0.61})
    await finish(store, jobs[4]["id"], Status.SUCCEEDED, {"test_acc_discrete": 0.83})
    await finish(store, jobs[2]["id"], Status.FAILED, {"test_acc_discrete": 0.12})
    view = await (await api.get(f"/sweeps/{sweep['id']}")).json()
    assert view["best"]["id"] == jobs[4]["id"]
    assert view["best"]["value"] == 0.83
    assert view["best"]["options"] == {"gates": 4000, "gateOptimizer": "softmax"}
    assert view["counts"]["Succeeded"] == 2 and view["remaining"] == 3
    assert [r["value"] for r in view["jobs"]][:5] == [0.61, None, 0.12, None, 0.83]
    assert [w["code"] for w in view["warnings"]] == ["test_selection"]  # allowed, but said
    assert "biased" in view["warnings"][0]["message"]
    listed = await (await api.get("/sweeps")).json()
    assert listed["sweeps"][0]["best"]["id"] == jobs[4]["id"]
    assert listed["sweeps"][0]["counts"] == view["counts"]
    # a loss ranks lower first
    low = await (await post(api, grid_body(metric="train_loss"))).json()
    await finish(store, low["jobs"][1]["id"], Status.SUCCEEDED, {"train_loss": 0.9})
    await finish(store, low["jobs"][5]["id"], Status.SUCCEEDED, {"train_loss": 0.2})
    view = await (await api.get(f"/sweeps/{low['id']}")).json()
    assert view["goal"] == "min" and view["best"]["id"] == low["jobs"][5]["id"]


async def test_cancel_ends_every_pending_job_and_flags_running_ones(
    api: TestClient, store: Store
) -> None:
    sweep = await (await post(api, grid_body())).json()
    running = ObjectId(sweep["jobs"][0]["id"])
    await store.jobs.collection.update_one(
        {"_id": running}, {"$set": {"status": Status.RUNNING.value, "attemptId": "a1"}}
    )
    await finish(store, sweep["jobs"][1]["id"], Status.SUCCEEDED, {"test_acc_discrete": 0.5})
    resp = await api.post(f"/sweeps/{sweep['id']}/cancel", json={}, headers=JSON)
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert (result["cancelled"], result["stopping"]) == (4, 1)
    assert result["sweep"]["status"] == "Cancelled"
    statuses = {
        d["sweepIndex"]: (d["status"], d.get("cancelRequested"))
        async for d in store.jobs.collection.find({})
    }
    assert statuses[0] == (Status.RUNNING.value, True)  # its worker stops it
    assert statuses[1][0] == Status.SUCCEEDED.value
    assert all(statuses[i] == (Status.CANCELLED.value, True) for i in (2, 3, 4, 5))
    # no slot of a cancelled sweep can be taken any more
    record = await store.sweeps.get(ObjectId(sweep["id"]))
    assert record is not None and record.cancelRequested
    assert not await store.sweeps.reserve(record.id, "x", running, deadline=1e18)
    again = await (await api.post(f"/sweeps/{sweep['id']}/cancel", json={}, headers=JSON)).json()
    assert (again["cancelled"], again["stopping"]) == (0, 0)


async def test_unknown_sweeps_are_404(api: TestClient) -> None:
    await error_of(await api.get("/sweeps/" + "0" * 24), 404, "sweep_not_found")
    await error_of(await api.get("/sweeps/nope"), 404, "sweep_not_found")
    await error_of(await api.post("/sweeps/" + "0" * 24 + "/cancel", json={}, headers=JSON), 404)


async def test_a_creation_that_died_is_removed_by_tidy(api: TestClient, store: Store) -> None:
    """An API process that died half-way leaves a `creating` sweep and held jobs: tidy
    removes them once the deadline passed; a `ready` sweep's held jobs are let go."""
    sweep = await (await post(api, grid_body())).json()
    sid = ObjectId(sweep["id"])
    await store.jobs.collection.update_many({"sweepId": sid}, {"$set": {"held": True}})
    assert await store.jobs.pending() == []  # held jobs are not claimable
    assert await tidy(store) == (0, 1)
    assert len(await store.jobs.pending()) == 6
    # a creation past its deadline
    await store.sweeps.collection.update_one(
        {"_id": sid}, [{"$set": {"state": "creating", "creatingUntil": "$$NOW"}}]
    )
    await store.jobs.collection.update_many({"sweepId": sid}, {"$set": {"held": True}})
    assert await tidy(store) == (1, 0)
    assert await job_count(store) == 0
    assert await store.sweeps.get(sid) is None


async def test_sweeps_count_against_the_pending_quota(make_api: MakeApi, store: Store) -> None:
    api = await make_api(max_pending=8)
    assert (await post(api, grid_body())).status == 201
    err = await error_of(await post(api, grid_body()), 429, "too_many_pending")
    assert "asks for 6 more" in err["message"]
    assert await job_count(store) == 6


async def test_the_seed_body_as_base(api: TestClient, store: Store) -> None:
    resp = await post(api, {"base": SEED_BODY, "grid": {"noiseTemp": [0.1, 0.2]}})
    assert resp.status == 201, await resp.text()
    sweep = await resp.json()
    assert sweep["total"] == 2 and sweep["varying"] == ["noiseTemp"]
    record = await store.sweeps.get(ObjectId(sweep["id"]))
    assert isinstance(record, SweepRecord) and record.base == SEED_BODY


def _result(val: float, test: float) -> dict[str, Any]:
    return {"epoch": 3, "val_acc_discrete": val, "test_acc_discrete": test,
            "test_acc": test + 0.01, "discretization_gap": 0.01}  # fmt: skip


async def test_seeds_group_runs_by_combination_and_best_is_the_best_mean(
    api: TestClient, store: Store
) -> None:
    """2 x 2 with seeds 3: twelve runs, seed 0..2 within each combination; each
    combination's mean, std and n are its runs' kept results'; best is the best mean by
    val_acc_discrete (the default metric), not the best single run."""
    body = {"base": BASE, "grid": {"gates": [1000, 2000], "learningRate": [0.01, 0.03]},
            "seeds": 3}  # fmt: skip
    resp = await post(api, body)
    assert resp.status == 201, await resp.text()
    sweep = await resp.json()
    assert (sweep["total"], sweep["seeds"], sweep["metric"]) == (12, 3, "val_acc_discrete")
    assert sweep["warnings"] == [] and sweep["varying"] == ["gates", "learningRate", "seed"]
    assert [r["options"]["seed"] for r in sweep["jobs"]] == [0, 1, 2] * 4
    assert [r["combination"] for r in sweep["jobs"]] == [i // 3 for i in range(12)]
    # combination 1 has the single best run (0.95), combination 2 the best mean
    vals = [0.80, 0.82, 0.84, 0.95, 0.60, 0.62, 0.90, 0.91, 0.89, 0.70, 0.71, 0.72]
    for job, val in zip(sweep["jobs"], vals, strict=True):
        await finish_with(store, job["id"], _result(val, val - 0.02))
    view = await (await api.get(f"/sweeps/{sweep['id']}")).json()
    rows = view["combinations"]
    assert [r["options"] for r in rows] == [
        {"gates": g, "learningRate": lr} for g in (1000, 2000) for lr in (0.01, 0.03)
    ]
    for row, start in zip(rows, range(0, 12, 3), strict=True):
        mine = vals[start : start + 3]
        assert row["n"] == 3 and row["jobs"] == [j["id"] for j in sweep["jobs"][start : start + 3]]
        assert row["mean"] == pytest.approx(statistics.fmean(mine))
        assert row["std"] == pytest.approx(statistics.stdev(mine))
        assert row["testAccDiscrete"] == pytest.approx(statistics.fmean(mine) - 0.02)
    best = view["best"]
    assert best["combination"] == 2 and best["options"] == {"gates": 2000, "learningRate": 0.01}
    assert best["value"] == pytest.approx(0.90) and best["n"] == 3
    assert best["id"] == sweep["jobs"][7]["id"]  # the combination's best run
    listed = await (await api.get("/sweeps")).json()
    assert listed["sweeps"][0]["best"]["combination"] == 2
    assert listed["sweeps"][0]["etaS"] is None  # finished


async def finish_with(store: Store, job_id: str, result: dict[str, Any]) -> None:
    """A Succeeded run whose last epoch differs from its kept network's."""
    await store.jobs.collection.update_one(
        {"_id": ObjectId(job_id)},
        {"$set": {"status": Status.SUCCEEDED.value, "result": result,
                  "latestMetrics": {"val_acc_discrete": 0.0, "test_acc_discrete": 0.0}},
         "$currentDate": {"startedAt": True, "finishedAt": True}},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"seeds": 21}, "seeds"), ({"seeds": 0}, "seeds"),
     ({"seeds": 2, "grid": {"seed": [1, 2]}}, "grid.seed"),
     ({"seeds": 2, "base": {**BASE, "seed": 4}}, "base.seed")],
)  # fmt: skip
async def test_seeds_is_bounded_and_not_set_twice(
    api: TestClient, extra: dict[str, Any], field: str
) -> None:
    body = {"base": BASE, "grid": {"gates": [1000]}, **extra}
    resp = await post(api, body)
    assert resp.status == 422
    assert field in await resp.text()


async def test_a_sweeps_eta_comes_from_its_runs(api: TestClient, store: Store) -> None:
    sweep = await (await post(api, grid_body(maxParallel=2))).json()
    jobs = sweep["jobs"]
    assert sweep["etaS"] is None  # nothing known yet
    now = datetime.now(UTC)
    await store.jobs.collection.update_one(
        {"_id": ObjectId(jobs[0]["id"])},
        {"$set": {"status": Status.SUCCEEDED.value, "finishedAt": now,
                  "startedAt": now - timedelta(seconds=10)}},
    )  # fmt: skip
    await store.jobs.collection.update_one(
        {"_id": ObjectId(jobs[1]["id"])}, {"$set": {"status": Status.RUNNING.value, "etaS": 4.0}}
    )
    view = await (await api.get(f"/sweeps/{sweep['id']}")).json()
    # 4 Pending, 2 at a time (one slot is free now), 10 s each: 2 waves
    assert view["etaS"] == pytest.approx(20.0)
    assert view["jobs"][1]["etaS"] == 4.0

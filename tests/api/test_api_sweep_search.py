"""POST /sweeps with a `scheduler` and a `search`: every bad input is a 422 naming its field
with nothing stored; a random or TPE sweep makes its first trials at once and shows its
progress and compute."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from api_helpers import JSON, MakeApi, error_of, job_count

from service.store import Store

BASE: dict[str, Any] = {
    "gateOptimizer": "softmax", "gates": 1000, "networkLayers": 2, "grouping": 10,
    "groupSumTau": 30, "residualLayers": 0, "epochs": 4,
}  # fmt: skip
GRID = {"gates": [1000, 2000], "learningRate": [0.01, 0.03]}


async def post(api: TestClient, body: dict[str, Any]) -> Any:
    return await api.post("/sweeps", json=body, headers=JSON)


async def nothing_stored(store: Store) -> None:
    assert await job_count(store) == 0
    assert await store.sweeps.collection.count_documents({}) == 0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"scheduler": {"type": "hyperband"}}, "scheduler"),
        ({"search": {"type": "bayes", "trials": 3}}, "search"),
        ({"scheduler": {"type": "asha", "reductionFactor": 1}}, "scheduler.asha.reductionFactor"),
        ({"scheduler": {"type": "asha", "minEpochs": 5}}, "scheduler.minEpochs"),
        ({"scheduler": {"type": "median", "graceEpochs": 0}}, "scheduler.median.graceEpochs"),
        ({"search": {"type": "tpe", "trials": 0}}, "search.tpe.trials"),
        ({"search": {"type": "tpe", "trials": 3}, "metric": "test_acc_discrete"}, "metric"),
        ({"scheduler": {"type": "asha"}, "metric": "test_acc"}, "metric"),
        ({"scheduler": {"type": "asha"}, "metric": "val_acc_dsicrete"}, "metric"),
        ({"search": {"type": "random", "trials": 3}, "metric": "epoch"}, "metric"),
        ({"search": {"type": "tpe", "trials": 3},
          "space": {"gates": {"intUniform": [60, 70]}}}, "space.gates"),
        ({"scheduler": {"type": "asha"}, "base": {**BASE, "validFraction": 0}},
         "base.validFraction"),
        ({"search": {"type": "tpe", "trials": 3},
          "space": {"groupSumTau": {"choice": [10, 10]}}}, "space.groupSumTau"),
        ({"space": {"groupSumTau": {"uniform": [1.0, 30.0]}}}, "space"),
        ({"search": {"type": "random", "trials": 3}, "runs": [{"gates": 1000}]}, "search"),
        ({"search": {"type": "tpe", "trials": 3},
          "space": {"noiseTemp": {"uniform": [2.0, 1.0]}}}, None),
    ],
)  # fmt: skip
async def test_bad_scheduler_or_search_is_a_422_naming_the_field(
    api: TestClient, store: Store, extra: dict[str, Any], field: str | None
) -> None:
    body = {"base": BASE, "grid": GRID, **extra}
    err = await error_of(await post(api, body), 422)
    named = [f["field"] for f in err.get("fields") or []]
    if field is not None:
        assert any(n == field or n.startswith(field + ".") for n in named), (named, err)
    await nothing_stored(store)


async def test_trials_above_max_sweep_is_a_422(make_api: MakeApi, store: Store) -> None:
    api = await make_api(max_sweep=5)
    body = {"base": BASE, "grid": GRID, "search": {"type": "tpe", "trials": 3}, "seeds": 2}
    err = await error_of(await post(api, body), 422)
    assert [f["field"] for f in err["fields"]] == ["search.trials"]
    assert "GATEQUEUE_MAX_SWEEP" in err["fields"][0]["message"]
    await nothing_stored(store)


async def test_a_tpe_sweep_makes_its_first_trials_and_shows_its_progress(
    api: TestClient, store: Store
) -> None:
    body = {
        "base": BASE,
        "grid": GRID,
        "space": {"groupSumTau": {"logUniform": [3.0, 100.0]}},
        "search": {"type": "tpe", "trials": 5, "seed": 1},
        "scheduler": {"type": "asha", "minEpochs": 1, "reductionFactor": 2},
        "maxParallel": 2,
        "seeds": 2,
    }
    resp = await post(api, body)
    assert resp.status == 201, await resp.text()
    sweep = await resp.json()
    assert sweep["total"] == 10 and sweep["search"]["type"] == "tpe"
    # maxParallel 2 over seeds 2: one trial unfinished at a time
    assert sweep["progress"] == {"done": 0, "asked": 1, "total": 5}
    assert [r["index"] for r in sweep["jobs"]] == [0, 1]
    assert {r["targetEpoch"] for r in sweep["jobs"]} == {1}
    assert {r["rung"] for r in sweep["jobs"]} == {0}
    assert sweep["compute"]["epochs"] == 0 and sweep["compute"]["gridEpochs"] is None
    assert sweep["varying"] == ["gates", "learningRate", "groupSumTau", "seed"]
    docs = await store.jobs.collection.find({}).sort("sweepIndex", 1).to_list(None)
    assert [d["sweepSlot"] for d in docs] == [f"{sweep['id']}:0", f"{sweep['id']}:1"]
    assert [d["hyperparameters"]["seed"] for d in docs] == [0, 1]
    got = await (await api.get(f"/sweeps/{sweep['id']}")).json()
    assert got["progress"] == sweep["progress"]


async def test_a_grid_sweep_with_asha_counts_the_full_grid(api: TestClient) -> None:
    body = {"base": BASE, "grid": GRID, "scheduler": {"type": "asha", "reductionFactor": 2}}
    sweep = await (await post(api, body)).json()
    assert sweep["progress"] == {"done": 0, "asked": 4, "total": 4}
    assert sweep["compute"] == {"epochs": 0, "gridEpochs": 16, "stoppedEarly": 0}
    assert [r["targetEpoch"] for r in sweep["jobs"]] == [1, 1, 1, 1]

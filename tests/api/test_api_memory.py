"""Memory admission at the API: every job gets its estimated peak; a job no live worker's
slot could ever hold is a 422 naming batchSize, gates or networkLayers with the estimate and
the largest slot, and nothing is stored; workers not seen for a while do not count."""

from __future__ import annotations

from typing import Any

from api_helpers import JSON, MakeApi, error_of, job_count
from bson import ObjectId

from service.jobs import memory
from service.store import Store
from service.store.queue import FREE_SLOT, MEMORY
from trainer.memory import estimate_memory

GiB = 1 << 30
SMALL: dict[str, Any] = {
    "gateOptimizer": "softmax", "gates": 1000, "networkLayers": 2, "grouping": 10,
    "groupSumTau": 30, "residualLayers": 0, "epochs": 2,
}  # fmt: skip
# The body: 1,000,000 gates x 64 layers, batch 65,536 (hundreds of GiB)
HUGE: dict[str, Any] = {**SMALL, "gates": 1_000_000, "networkLayers": 64, "batchSize": 65536}


async def register(store: Store, worker: str, *slots: tuple[str, int | None]) -> None:
    await store.workers.register(
        worker, "host", [{"gpu": gpu, "memoryBytes": held} for gpu, held in slots]
    )


async def test_without_workers_nothing_is_refused_and_the_estimate_is_stored(
    make_api: MakeApi, store: Store
) -> None:
    api = await make_api()
    resp = await api.post("/jobs", json=HUGE, headers=JSON)
    assert resp.status == 201, await resp.text()
    job = await resp.json()
    assert job["memoryEstimate"] == {
        "cpu": estimate_memory(HUGE, "cpu").total_bytes,
        "cuda": estimate_memory(HUGE, "cuda").total_bytes,
    }
    shown = await (await api.get(f"/jobs/{job['id']}")).json()
    assert shown["waitingFor"] == FREE_SLOT  # no worker yet: nothing to compare with


async def test_a_job_no_slot_can_hold_is_a_422_naming_its_fields(
    make_api: MakeApi, store: Store
) -> None:
    await register(store, "small", ("cpu", 4 * GiB))
    api = await make_api()
    err = await error_of(await api.post("/jobs", json=HUGE, headers=JSON), 422)
    assert err["code"] == "too_big_for_workers"
    estimate = memory.human(estimate_memory(HUGE, "cpu").total_bytes)
    assert f"needs an estimated {estimate} on cpu" in err["message"]
    assert "the largest worker slot holds 4.0 GiB" in err["message"]
    assert [f["field"] for f in err["fields"]] == ["batchSize", "gates", "networkLayers"]
    assert all(f["type"] == "memory" for f in err["fields"])
    assert await job_count(store) == 0
    # what fits is accepted, with its estimate
    resp = await api.post("/jobs", json=SMALL, headers=JSON)
    assert resp.status == 201, await resp.text()


async def test_a_conv_job_no_slot_can_hold_names_its_channels(
    make_api: MakeApi, store: Store
) -> None:
    await register(store, "small", ("cpu", 4 * GiB))
    api = await make_api()
    conv = {**SMALL, "architecture": "conv", "dataset": "cifar10", "convChannels": "512,1024",
            "batchSize": 4096}  # fmt: skip
    err = await error_of(await api.post("/jobs", json=conv, headers=JSON), 422)
    assert err["code"] == "too_big_for_workers"
    assert "convChannels" in err["message"]
    assert [f["field"] for f in err["fields"]] == [
        "batchSize", "convChannels", "gates", "networkLayers"
    ]  # fmt: skip
    assert await job_count(store) == 0


async def test_the_model_s_size_is_named_first_when_it_dominates(
    make_api: MakeApi, store: Store
) -> None:
    await register(store, "small", ("cpu", 2 * GiB))
    api = await make_api()
    wide = {**SMALL, "gates": 1_000_000, "networkLayers": 16, "batchSize": 16}
    err = await error_of(await api.post("/jobs", json=wide, headers=JSON), 422)
    assert [f["field"] for f in err["fields"]] == ["gates", "networkLayers", "batchSize"]


async def test_any_slot_that_fits_is_enough_and_stale_workers_do_not_count(
    make_api: MakeApi, store: Store
) -> None:
    big = estimate_memory(HUGE, "cuda").total_bytes + GiB
    await register(store, "cpu-box", ("cpu", 4 * GiB))
    await register(store, "gpu-box", ("0", big))
    api = await make_api()
    assert (await api.post("/jobs", json=HUGE, headers=JSON)).status == 201
    # the GPU box has not been seen for an hour: only the CPU box is live
    await store.workers.collection.update_one(
        {"_id": "gpu-box"}, [{"$set": {"heartbeatAt": {"$subtract": ["$$NOW", 3_600_000]}}}]
    )
    api = await make_api()
    await error_of(await api.post("/jobs", json=HUGE, headers=JSON), 422, "too_big_for_workers")
    # a slot of unknown size refuses nothing
    await register(store, "unknown", ("cpu", None))
    api = await make_api()
    assert (await api.post("/jobs", json=HUGE, headers=JSON)).status == 201


async def test_a_sweep_with_a_combination_too_big_is_refused_whole(
    make_api: MakeApi, store: Store
) -> None:
    await register(store, "small", ("cpu", 4 * GiB))
    api = await make_api()
    body = {"base": SMALL, "grid": {"batchSize": [64, 65536], "gates": [1000, 1_000_000]}}
    err = await error_of(await api.post("/sweeps", json=body, headers=JSON), 422)
    assert err["code"] == "invalid_combination"
    assert err["combination"]["values"] == {"batchSize": 64, "gates": 1_000_000}
    assert err["fields"][0]["field"] == "gates"  # a million gates: the model is too big
    assert [c["index"] for c in err["combinations"]] == [1, 3]
    assert err["combinations"][1]["fields"][0]["field"] == "batchSize"
    assert await job_count(store) == 0
    ok = await api.post("/sweeps", json={"base": SMALL, "grid": {"gates": [1000, 2000]}},
                        headers=JSON)  # fmt: skip
    assert ok.status == 201
    docs = await store.jobs.collection.find({}).to_list(None)
    assert all(d["memoryEstimate"]["cpu"] > 0 for d in docs)


async def test_a_pending_job_says_when_it_waits_for_a_bigger_worker(
    make_api: MakeApi, store: Store
) -> None:
    api = await make_api()
    job = await (await api.post("/jobs", json=HUGE, headers=JSON)).json()
    await register(store, "small", ("cpu", 4 * GiB))  # registered after it was accepted
    shown = await (await api.get(f"/jobs/{job['id']}")).json()
    assert shown["waitingFor"] == MEMORY
    assert ObjectId(job["id"])

"""Hostile sweeps (issue 26): every value a sweep lists is checked before anything is
stored, bodies nest at most `MAX_JSON_DEPTH` levels, an error always encodes, a stored
record that cannot be shown never takes the sweep views down, and refused submissions
count against the rate limit. Each test checks that nothing was stored on refusal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient
from api_helpers import JSON, SEED_BODY, MakeApi, error_of, job_count
from bson import ObjectId

from service.api.body import MAX_JSON_DEPTH
from service.api.errors import dumps, error_body
from service.store import Store
from service.sweeps.record import SweepRecord

BASE: dict[str, Any] = {**SEED_BODY, "epochs": 1}


def nested(depth: int, leaf: Any = 1) -> Any:
    """`leaf` inside `depth` lists."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


async def counts(store: Store) -> tuple[int, int]:
    """(sweeps, jobs) stored."""
    return await store.sweeps.collection.count_documents({}), await job_count(store)


async def post_raw(api: TestClient, body: bytes) -> Any:
    return await api.post("/sweeps", data=body, headers=JSON)


# -- defect 3: every value validated, nesting bounded ------------------------------------


async def test_grid_values_that_runs_override_are_still_validated(
    api: TestClient, store: Store
) -> None:
    """Was 201, stored and echoed back: `runs` sets `seed`, so the grid's seeds were never
    part of a job."""
    body = {"base": BASE, "grid": {"seed": ["not a seed", {"$gt": ""}]}, "runs": [{"seed": 1}]}
    error = await error_of(await api.post("/sweeps", json=body), 422, "validation_error")
    assert [f["field"] for f in error["fields"]] == ["grid.seed.0", "grid.seed.1"]
    assert error["message"] == "invalid values: grid.seed.0, grid.seed.1"
    assert await counts(store) == (0, 0)


async def test_unpicked_choices_and_overridden_base_values_are_validated(
    api: TestClient, store: Store
) -> None:
    """One sample picks only the first choice; the second was never checked. A `base`
    value every run overrides was not either."""
    sample = {"n": 1, "seed": 0, "space": {"gateOptimizer": {"choice": ["softmax", "nope"]}}}
    body = {"base": {**BASE, "seed": "x"}, "grid": {"seed": [1]}, "random": sample}
    error = await error_of(await api.post("/sweeps", json=body), 422, "validation_error")
    assert [f["field"] for f in error["fields"]] == [
        "base.seed",
        "random.space.gateOptimizer.choice.1",
    ]
    assert await counts(store) == (0, 0)


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (lambda deep: {"random": {"n": 1, "space": {"seed": {"choice": [1, deep]}}}},
         "random.space.seed.choice.1"),
        (lambda deep: {"grid": {"seed": [deep]}, "runs": [{"seed": 1}]}, "grid.seed.0"),
    ],
    ids=["unpicked choice", "overridden grid value"],
)  # fmt: skip
@pytest.mark.parametrize("depth", [400, 300, 20])
async def test_deep_values_are_refused_and_sweeps_stay_readable(
    api: TestClient, store: Store, where: Any, field: str, depth: int
) -> None:
    """Was a 500 after storing the sweep and its job, and then `GET /sweeps` was a 500 for
    everyone. Past MAX_JSON_DEPTH the parse refuses it (400); within, the value check (422)."""
    ok = await api.post("/sweeps", json={"base": BASE, "grid": {"seed": [1]}})
    assert ok.status == 201
    before = await counts(store)
    resp = await api.post("/sweeps", json={"base": BASE, **where(nested(depth))})
    if depth > MAX_JSON_DEPTH:
        error = await error_of(resp, 400, "invalid_json")
        assert f"deeper than {MAX_JSON_DEPTH} levels" in error["message"]
    else:
        error = await error_of(resp, 422, "validation_error")
        assert [f["field"] for f in error["fields"]] == [field]
    assert await counts(store) == before
    listed = await api.get("/sweeps")
    assert listed.status == 200 and len((await listed.json())["sweeps"]) == 1


async def test_every_json_body_is_depth_bounded_at_parse(api: TestClient, store: Store) -> None:
    """One parse for all routes: a job body nested one level past the bound is a 400
    without being built; at the bound it is parsed and refused by the model (422)."""
    too_deep = {**SEED_BODY, "name": nested(MAX_JSON_DEPTH)}  # + the body itself
    error = await error_of(await api.post("/jobs", json=too_deep), 400, "invalid_json")
    assert "nests deeper" in error["message"]
    at_bound = {**SEED_BODY, "name": nested(MAX_JSON_DEPTH - 1)}
    await error_of(await api.post("/jobs", json=at_bound), 422, "validation_error")
    # brackets inside strings are text, not nesting
    resp = await api.post("/jobs", json={**SEED_BODY, "name": "[" * 100 + "{" * 100})
    assert resp.status == 201, await resp.text()
    assert await job_count(store) == 1


# -- a stored record that cannot be shown ------------------------------------------------


async def test_a_stored_sweep_that_cannot_be_shown_is_skipped_and_logged(
    api: TestClient, store: Store
) -> None:
    """Records stored before values were checked, by hand or by another version: one whose
    request holds what JSON cannot say (a deep value did that before; MongoDB itself allows
    100 levels, pydantic's serializer 255, so a storable stand-in is a value of a BSON type
    JSON has not), one that is no sweep record at all. `GET /sweeps` lists the others and
    logs them; the first one's own page and cancel answer with its request cut."""
    good = await (await api.post("/sweeps", json={"base": BASE, "grid": {"seed": [1]}})).json()
    odd = SweepRecord(
        id=ObjectId(),
        base={**BASE, "note": b"\xff"},
        runs=[{"seed": ObjectId()}],
        metric="test_acc_discrete",
        total=0,
        varying=[],
        createdAt=datetime.now(UTC),
    )
    await store.sweeps.insert(odd)
    await store.sweeps.collection.insert_one({"_id": ObjectId(), "state": "ready"})
    with structlog.testing.capture_logs() as logs:
        listed = await api.get("/sweeps")
        assert listed.status == 200, await listed.text()
        assert [s["id"] for s in (await listed.json())["sweeps"]] == [good["id"]]
        shown = await api.get(f"/sweeps/{odd.id}")
        assert shown.status == 200, await shown.text()
        view = await shown.json()
        assert view["runs"] == [{"seed": str(odd.runs[0]["seed"])}]
        assert view["base"]["note"] == "b'\\xff'"
        cancelled = await api.post(f"/sweeps/{odd.id}/cancel", json={}, headers=JSON)
        assert cancelled.status == 200, await cancelled.text()
    errors = [e for e in logs if e["log_level"] == "error"]
    assert {e["event"] for e in errors} == {
        "sweep record cannot be shown; not listed",
        "sweep record unreadable; not listed",
        "sweep record cannot be shown; its request is cut",
    }
    assert (await api.get("/sweeps")).status == 200


# -- defect 6: 422s, not 500s ------------------------------------------------------------

BIG = 10**4000  # 4,001 digits: json.loads still reads it


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"grid": {"gates": [10**30]}}, "grid.gates.0"),
        ({"grid": {"seed": [2**64]}}, "grid.seed.0"),
        ({"random": {"n": 1, "space": {"seed": {"intUniform": [0, BIG]}}}},
         "random.space.seed.intUniform.1"),
        ({"random": {"n": 1, "space": {"seed": {"choice": [1, BIG]}}}},
         "random.space.seed.choice.1"),
        ({"random": {"n": 1, "space": {"name": {"choice": ["a", "\udfff"]}}}},
         "random.space.name.choice.1"),
        ({"grid": {"name": ["\udfff"]}}, "grid.name.0"),
        ({"runs": [{"learningRate": 10**400}]}, "runs.0.learningRate"),
        ({"random": {"n": 1, "seed": 2**64, "space": {"seed": {"choice": [1]}}}},
         "random.seed"),
    ],
    ids=["gates 1e30", "seed 2**64", "intUniform bound", "big choice", "surrogate choice",
         "surrogate grid", "float past range", "sampler seed"],
)  # fmt: skip
async def test_values_that_fit_no_float_or_encoding_are_422_naming_the_field(
    api: TestClient, store: Store, extra: dict[str, Any], field: str
) -> None:
    """Were aiohttp's plain-text 500 (the error body could not be encoded) or a JSON 500."""
    body = json.dumps({"base": BASE, **extra}).encode()  # "\udfff" as its JSON escape
    error = await error_of(await post_raw(api, body), 422, "validation_error")
    assert field in [f["field"] for f in error["fields"]], error
    assert await counts(store) == (0, 0)


def test_an_error_body_always_encodes() -> None:
    """Whatever a handler puts in an error (a value it refused), the body is JSON."""
    body = error_body(
        "x", "bad \udfff" + "m" * 5000,
        extra={"values": {"a": 10**30, "b": "\udfff", "c": nested(50), "\udfff": ObjectId()}},
    )  # fmt: skip
    text = json.loads(json.dumps(body))["error"]
    assert len(text["message"]) <= 1000 and "\\udfff" in text["message"]
    assert text["values"]["a"] == "an integer of 100 bits"
    assert text["values"]["b"] == "\\udfff"
    assert "nested too deep" in json.dumps(text["values"]["c"])
    dumps(body)  # orjson: what the API sends


# -- defect 7: the rate limit first, refused sweeps counted ------------------------------


async def test_refused_sweeps_count_against_the_rate_limit(make_api: MakeApi, store: Store) -> None:
    """The quota was checked after planning: a client could make the API plan bad sweeps
    without end. Now every submission takes from the rate first."""
    api = await make_api(submit_rate_per_min=3)
    runs = [{"seed": i} for i in range(999)] + [{"seed": -1}]
    bad = {"base": BASE, "runs": runs}
    for _ in range(2):
        await error_of(await api.post("/sweeps", json=bad), 422, "validation_error")
    await error_of(await api.post("/jobs", json={**BASE, "gates": 0}), 422)
    resp = await api.post("/sweeps", json={"base": BASE, "grid": {"seed": [1]}})
    await error_of(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1
    assert await counts(store) == (0, 0)

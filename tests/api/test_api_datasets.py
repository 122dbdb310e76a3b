"""`/datasets`: uploads streamed, validated and encoded; versions; every bad input refused
with nothing stored (docs/datasets.md)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from api_helpers import SEED_BODY, MakeApi, bearer, error_of
from bson import ObjectId

from service import tokens
from service.api import routes_datasets
from service.datasets.record import DatasetRecord
from service.jobs import memory
from service.jobs.retention import Policy, Retention
from service.store import Store
from service.store.files import ARTIFACTS_BUCKET
from service.sweeps import controller
from service.tokens import Role

OCTETS = {"Content-Type": "application/octet-stream"}


def npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def blobs(seed: int = 0, n: int = 300, features: int = 6, classes: int = 3) -> dict[str, Any]:
    """Separable classes: each one's features sit around its own centre."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(0, 4, (classes, features))
    x = centres[y] + rng.normal(0, 1, (n, features))
    return {"x_train": x.astype(np.float32), "y_train": y}


async def upload(
    api: TestClient, body: bytes, headers: dict[str, str] | None = None, **params: Any
) -> Any:
    return await api.post(
        "/datasets", data=body, params={k: str(v) for k, v in params.items()},
        headers={**OCTETS, **(headers or {})},
    )  # fmt: skip


async def stored(store: Store) -> tuple[int, int, int]:
    """(records, GridFS files, GridFS chunks) of data sets."""
    db = store.db
    return (
        await db["datasets"].count_documents({}),
        await db["datasets.files"].count_documents({}),
        await db["datasets.chunks"].count_documents({}),
    )


async def test_npz_registered_listed_downloaded_versioned(api: TestClient, store: Store) -> None:
    body = npz(**blobs())
    resp = await upload(api, body, name="blobs", bits=4)
    assert resp.status == 201, await resp.text()
    first = await resp.json()
    assert resp.headers["Location"] == f"/datasets/{first['id']}"
    assert first["name"] == "blobs" and first["version"] == 1
    assert first["classes"] == 3
    assert first["shape"] == {"inputs": 24, "train": 240, "valid": 0, "test": 60, "image": None}
    assert first["encoding"]["bits"] == 4 and first["encoding"]["thermometerFeatures"] == 6
    assert first["bytes"] == len(body)

    again = await upload(api, body, name="blobs", bits=4)
    assert again.status == 200
    assert (await again.json())["id"] == first["id"]

    changed = await upload(api, npz(**blobs(seed=1)), name="blobs", bits=4)
    assert changed.status == 201
    second = await changed.json()
    assert second["version"] == 2 and second["id"] != first["id"]

    listed = await (await api.get("/datasets")).json()
    names = [(d["name"], d.get("version")) for d in listed["datasets"]]
    assert names[:2] == [("blobs", 2), ("blobs", 1)]
    assert {"digits", "breast_cancer", "mnist", "cifar10"} <= {
        d["name"] for d in listed["datasets"] if d.get("builtin")
    }

    file = await api.get(f"/datasets/{first['id']}/file")
    assert file.status == 200
    assert await file.read() == body
    one = await (await api.get(f"/datasets/{second['id']}")).json()
    assert one == second
    assert await stored(store) == (2, 4, 4)


async def test_csv_with_categorical_and_label_columns(api: TestClient) -> None:
    rows = ["age,colour,size,cls"]
    rng = np.random.default_rng(0)
    for i in range(200):
        cls = ">50K" if i % 2 else "<=50K"
        colour = ("red" if i % 2 else "blue") if i % 5 else "green"
        rows.append(f"{20 + rng.integers(0, 50)},{colour},{i % 3},{cls}")
    body = ("\n".join(rows) + "\n").encode()
    resp = await upload(
        api, body, {"Content-Type": "text/csv"}, name="adult-mini", labelColumn="cls", bits=3,
        categorical="size",
    )  # fmt: skip
    assert resp.status == 201, await resp.text()
    record = await resp.json()
    assert record["classes"] == 2
    assert record["encoding"]["labels"] == ["<=50K", ">50K"]
    assert record["encoding"]["categories"] == {
        "colour": ["blue", "green", "red"], "size": ["0", "1", "2"]
    }  # fmt: skip
    assert record["shape"]["inputs"] == 3 + 3 + 3  # age thermometer, colour, size one-hot
    assert record["shape"]["train"] + record["shape"]["test"] == 200


def _zip_of(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, x_train=np.zeros((4000, 1000), np.uint8), y_train=np.zeros(4000))
    return buf.getvalue()


def _ragged() -> bytes:
    buf = io.BytesIO()
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = [1.0, 2.0], [3.0]
    np.savez(buf, x_train=ragged, y_train=np.array([0, 1]))
    return buf.getvalue()


def _flagged(body: bytes, *, flag: int = 0, method: int | None = None) -> bytes:
    """An npz whose members claim encryption (`flag`) or a compression method Python cannot
    read (`method`): the central directory edited as another tool would write it."""
    data = bytearray(body)
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:  # central directory entries
        data[at + 8] |= flag
        if method is not None:
            data[at + 10 : at + 12] = method.to_bytes(2, "little")
        at += 4
    at = 0
    while (at := data.find(b"PK\x03\x04", at)) >= 0:  # local headers
        data[at + 6] |= flag
        if method is not None:
            data[at + 8 : at + 10] = method.to_bytes(2, "little")
        at += 4
    return bytes(data)


def _ids_csv(rows: int) -> bytes:
    lines = ["label,id,a", *(f"{i % 2},id{i},{i % 7}" for i in range(rows))]
    return "\n".join(lines).encode()


GOOD = blobs()
BAD: list[tuple[str, bytes, dict[str, Any], int, str]] = [
    ("not a file of either kind", bytes(range(256)) * 4, {}, 422, "not a UTF-8 CSV"),
    ("a zip that is no npz", _zip_of(**{"readme.txt": b"hi"}), {}, 422, "unexpected member"),
    ("a member that is no array", _zip_of(**{"x_train.npy": b"junk"}), {}, 422,
     "not a readable .npy"),
    ("missing x_train", npz(y_train=GOOD["y_train"]), {}, 422, "no x_train"),
    ("ragged rows", _ragged(), {}, 422, "rows of unequal length"),
    ("NaN", npz(x_train=np.where(np.eye(300, 6) > 0, np.nan, GOOD["x_train"]),
                y_train=GOOD["y_train"]), {}, 422, "NaN or infinite"),
    ("infinity", npz(x_train=np.where(np.eye(300, 6) > 0, np.inf, GOOD["x_train"]),
                     y_train=GOOD["y_train"]), {}, 422, "NaN or infinite"),
    ("labels not integers", npz(x_train=GOOD["x_train"], y_train=GOOD["y_train"] + 0.5), {},
     422, "not integers"),
    ("a single class", npz(x_train=GOOD["x_train"], y_train=np.zeros(300, int)), {}, 422,
     "single class"),
    ("x and y of different lengths", npz(x_train=GOOD["x_train"], y_train=GOOD["y_train"][:-1]),
     {}, 422, "300 rows and y_train 299 labels"),
    ("x neither rows nor images", npz(x_train=np.zeros((10, 2, 2, 2, 2)),
                                      y_train=np.arange(10) % 2), {}, 422, "got shape"),
    ("a CSV without the label column", b"a,b\n1,2\n3,4\n", {}, 422, "no label column 'label'"),
    ("a CSV with unequal rows", b"a,label\n1,0\n2\n", {}, 422, "rows of unequal length"),
    ("a file over the limit", npz(**GOOD), {"max_dataset": 1000}, 413, "past the limit"),
    ("a decompression bomb", _bomb(), {"max_dataset": 1 << 20}, 413, "expands to"),
    ("an encrypted member", _flagged(npz(**GOOD), flag=1), {}, 422, "encrypted"),
    ("an unknown compression", _flagged(npz(**GOOD), method=99), {}, 422, "encrypted or"),
    ("labels past exact integers", npz(x_train=GOOD["x_train"][:2],
                                       y_train=np.array([1e20, 2e20])), {}, 422, "too large"),
    ("an id as a categorical column", _ids_csv(20_000), {}, 422, "Is 'id' an id?"),
    ("more classes than a network takes", b"label,a\n" + b"".join(
        b"%d,%d\n" % (i, i % 3) for i in range(1500)), {}, 422, "1500 classes"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "settings", "status", "message"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])  # fmt: skip
async def test_bad_input_refused_with_nothing_stored(
    make_api: MakeApi,
    store: Store,
    body: bytes,
    settings: dict[str, Any],
    status: int,
    message: str,
) -> None:
    # A data set registered before, under the name the bad upload takes: it stays as it was.
    first = await (await upload(await make_api(), npz(**GOOD), name="bad")).json()
    before = await stored(store)
    api = await make_api(**settings)
    resp = await upload(api, body, name="bad")
    code = "dataset_too_large" if status == 413 else "invalid_dataset"
    error = await error_of(resp, status, code)
    assert message in error["message"]
    assert await stored(store) == before == (1, 2, 2)
    listed = await (await api.get("/datasets", params={"name": "bad"})).json()
    assert [(d["id"], d["version"]) for d in listed["datasets"]] == [(first["id"], 1)]


async def test_name_with_control_characters_refused(api: TestClient, store: Store) -> None:
    resp = await upload(api, npz(**GOOD), name="bad\x01name")
    error = await error_of(resp, 422, "validation_error")
    assert error["fields"][0]["field"] == "name"
    assert await stored(store) == (0, 0, 0)


async def test_json_content_type_refused(api: TestClient) -> None:
    resp = await api.post("/datasets", params={"name": "x"}, json={"a": 1})
    await error_of(resp, 415, "unsupported_media_type")


async def test_upload_cut_off_stores_nothing(
    api: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client sends half its body and closes: the handler ends (aiohttp cancels it, or
    the read fails) and removes its temporary files; nothing is stored."""
    ended = asyncio.Event()
    left: list[Path] = []
    real = routes_datasets._discard

    async def watched(tmp: Path) -> None:
        try:
            await real(tmp)
        finally:
            left.append(tmp)
            ended.set()

    monkeypatch.setattr(routes_datasets, "_discard", watched)
    host, port = api.server.host, api.server.port
    loop = asyncio.get_running_loop()
    sock = socket.create_connection((host, port))
    sock.setblocking(False)
    head = (
        f"POST /datasets?name=cut HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
    ).encode()
    await loop.sock_sendall(sock, head + npz(**GOOD)[:5000])
    sock.close()
    await asyncio.wait_for(ended.wait(), 30)
    assert not left[0].exists()
    assert await stored(store) == (0, 0, 0)


async def _register(api: TestClient, seed: int = 0, **params: Any) -> dict[str, Any]:
    resp = await upload(api, npz(**blobs(seed)), name=params.pop("name", "blobs"), **params)
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def test_jobs_resolve_names_and_keep_their_version(api: TestClient) -> None:
    v1 = await _register(api)
    body = {**SEED_BODY, "dataset": "blobs", "grouping": 3, "gates": 30, "residualLayers": 0}
    job = await (await api.post("/jobs", json=body)).json()
    assert job["datasetRef"] == {"id": v1["id"], "name": "blobs", "version": 1,
                                 "sha256": v1["sha256"]}  # fmt: skip
    pinned = await (await api.post("/jobs", json={**body, "dataset": "blobs@1"})).json()
    v2 = await _register(api, seed=1)
    latest = await (await api.post("/jobs", json=body)).json()
    assert latest["datasetRef"]["id"] == v2["id"]
    again = await (await api.get(f"/jobs/{pinned['id']}")).json()
    assert again["datasetRef"]["version"] == 1
    assert (
        job["memoryEstimate"]
        != (
            await (
                await api.post("/jobs", json={**body, "dataset": "digits", "grouping": 10})
            ).json()
        )["memoryEstimate"]
    )


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"grouping": 10}, "grouping", "must equal the number of classes of blobs@1 (3)"),
        ({"dataset": "nope"}, "dataset", "no data set named 'nope'"),
        ({"dataset": "blobs@7"}, "dataset", "has no version 7 (the latest is 1)"),
        ({"dataset": "bad name"}, "dataset", "a data set name"),
    ],
)
async def test_jobs_with_bad_dataset_refused(
    api: TestClient, store: Store, change: dict[str, Any], field: str, message: str
) -> None:
    await _register(api)
    body = {**SEED_BODY, "dataset": "blobs", "grouping": 3, "gates": 30, "residualLayers": 0}
    error = await error_of(await api.post("/jobs", json={**body, **change}), 422)
    assert error["fields"][0]["field"] == field
    assert message in error["fields"][0]["message"]
    assert await store.jobs.collection.count_documents({}) == 0


async def test_delete_refused_while_a_job_uses_it(
    make_api: MakeApi, store: Store, tmp_path: Any
) -> None:
    path = tmp_path / "tokens.json"
    alice = bearer(tokens.add(path, "alice", Role.SUBMIT))
    bob = bearer(tokens.add(path, "bob", Role.SUBMIT))
    api = await make_api(tokens_file=path)
    resp = await upload(api, npz(**GOOD), alice, name="blobs")
    record = await resp.json()
    body = {**SEED_BODY, "dataset": "blobs", "grouping": 3, "gates": 30, "residualLayers": 0}
    job = await (await api.post("/jobs", json=body, headers=alice)).json()
    await error_of(await api.delete(f"/datasets/{record['id']}", headers=bob), 403, "forbidden")
    error = await error_of(
        await api.delete(f"/datasets/{record['id']}", headers=alice), 409, "dataset_in_use"
    )
    assert job["id"] in error["message"]
    cancelled = await api.post(f"/jobs/{job['id']}/cancel", json={}, headers=alice)
    assert cancelled.status == 200, await cancelled.text()
    resp = await api.delete(f"/datasets/{record['id']}", headers=alice)
    assert resp.status == 200, await resp.text()
    assert await stored(store) == (0, 0, 0)
    await error_of(await api.get(f"/datasets/{record['id']}", headers=alice), 404)


async def test_sweeps_over_registered_data_sets(api: TestClient, store: Store) -> None:
    record = await _register(api)
    base = {"gateOptimizer": "softmax", "gates": 30, "networkLayers": 2, "grouping": 3}
    resp = await api.post(
        "/sweeps", json={"base": {**base, "dataset": "blobs"}, "grid": {"gates": [30, 60]}}
    )
    assert resp.status == 201, await resp.text()
    jobs = [job async for job in store.jobs.collection.find({})]
    assert len(jobs) == 2
    assert {str(j["datasetRef"]["id"]) for j in jobs} == {record["id"]}

    unknown = await api.post("/sweeps", json={"base": base, "grid": {"dataset": ["blobs", "nope"]}})
    error = await error_of(unknown, 422, "validation_error")
    assert error["fields"][0]["field"] == "grid.dataset.1"
    mixed = await api.post("/sweeps", json={"base": base, "grid": {"dataset": ["blobs", "digits"]}})
    error = await error_of(mixed, 422, "invalid_combination")
    assert error["combination"]["values"] == {"dataset": "digits"}
    ten = await api.post(
        "/sweeps", json={"base": {**base, "grouping": 10}, "grid": {"dataset": ["blobs"]}}
    )
    error = await error_of(ten, 422, "invalid_combination")
    assert "classes of blobs@1 (3)" in error["fields"][0]["message"]
    assert await store.jobs.collection.count_documents({}) == 2


async def test_a_random_search_over_a_registered_data_set_makes_its_trials(
    api: TestClient, store: Store
) -> None:
    """Its runs are sized by the data set's shape (they were never made: "unknown dataset"),
    and the data set is not deleted while the search has trials to make."""
    record = await _register(api)
    base = {"gateOptimizer": "softmax", "gates": 30, "networkLayers": 2, "grouping": 3,
            "dataset": "blobs"}  # fmt: skip
    resp = await api.post("/sweeps", json={
        "base": base, "grid": {"gates": [30, 60, 90]}, "maxParallel": 2,
        "search": {"type": "random", "trials": 3, "seed": 1},
    })  # fmt: skip
    assert resp.status == 201, await resp.text()
    sweep_id = ObjectId((await resp.json())["id"])
    await controller.fill(store, sweep_id)
    jobs = [job async for job in store.jobs.collection.find({"sweepId": sweep_id})]
    assert [j["status"] for j in jobs] == ["Pending", "Pending"]
    assert {str(j["datasetRef"]["id"]) for j in jobs} == {record["id"]}
    assert all(j["memoryEstimate"]["cpu"] > 0 for j in jobs)
    # Its runs so far ended (as a worker writes it), its third trial not made yet.
    await store.jobs.collection.update_many(
        {"sweepId": sweep_id}, {"$set": {"status": "Succeeded"}}
    )
    error = await error_of(await api.delete(f"/datasets/{record['id']}"), 409, "dataset_in_use")
    assert str(sweep_id) in error["message"]


async def test_an_upload_streams_past_the_json_body_limit(api: TestClient) -> None:
    """The app's client_max_size (MAX_BODY_BYTES) bounds JSON bodies, not uploads."""
    from service.api.errors import MAX_BODY_BYTES

    body = npz(**blobs(n=4000, features=12))
    assert len(body) > 3 * MAX_BODY_BYTES
    resp = await upload(api, body, name="larger")
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["bytes"] == len(body)


async def test_a_stalled_upload_is_answered_408_with_nothing_stored(
    make_api: MakeApi, store: Store
) -> None:
    """Each part of an upload must come within the body timeout of the one before."""
    api = await make_api(body_timeout_s=0.5)
    host, port = api.server.host, api.server.port
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST /datasets?name=slow HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    writer.write(head + npz(**GOOD)[:1000])
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408"), status
    assert await stored(store) == (0, 0, 0)


def images(seed: int = 0, n: int = 120, size: int = 8) -> dict[str, Any]:
    """(n, size, size) uint8 images, two classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 100, (n, size, size)).astype(np.uint8)
    x[y == 1, size // 2] = 255
    return {"x_train": x, "y_train": y}


CONV = {**SEED_BODY, "grouping": 2, "gates": 40, "networkLayers": 1, "residualLayers": 0,
        "architecture": "conv", "convChannels": "4", "kernelSize": 3, "poolSize": 2}  # fmt: skip


async def test_an_image_keeps_its_shape_and_a_conv_run_is_estimated_on_it(
    api: TestClient, store: Store
) -> None:
    """An (n, 8, 8) npz records its image (thermometer bits as channels); a conv job on it
    is accepted with the memory estimate of that shape, which the dense estimate of the
    same bits is not."""
    resp = await upload(api, npz(**images()), name="imgs", bits=3)
    assert resp.status == 201, await resp.text()
    record = await resp.json()
    assert record["shape"]["image"] == {"height": 8, "width": 8, "channels": 3}
    assert record["shape"]["inputs"] == 8 * 8 * 3
    job = await api.post("/jobs", json={**CONV, "dataset": "imgs"})
    assert job.status == 201, await job.text()
    estimate = (await job.json())["memoryEstimate"]
    shape = DatasetRecord.model_validate(record).shape.data_shape()
    hp = {**CONV, "dataset": "imgs"}
    assert estimate == memory.estimate(hp, shape).model_dump()
    assert estimate != memory.estimate({**hp, "architecture": "dense"}, shape).model_dump()
    listed = await (await api.get("/datasets")).json()
    digits = next(d for d in listed["datasets"] if d["name"] == "digits")
    assert digits["shape"]["image"] == {"height": 8, "width": 8, "channels": 4}
    tabular = next(d for d in listed["datasets"] if d["name"] == "breast_cancer")
    assert tabular["shape"]["image"] is None


@pytest.mark.parametrize(
    ("dataset", "change", "field", "message"),
    [
        ("blobs", {}, "architecture", "blobs@1 has no image shape"),
        ("imgs", {"kernelSize": 11}, "kernelSize", "kernelSize"),
        ("imgs", {"convChannels": "4,4,4,4", "poolSize": 2}, "poolSize", "below 1x1"),
    ],
    ids=["tabular", "kernel larger than the image", "pooled below 1x1"],
)
async def test_conv_runs_that_do_not_fit_a_registered_data_set_are_refused(
    api: TestClient, store: Store, dataset: str, change: dict[str, Any], field: str, message: str
) -> None:
    await _register(api)
    assert (await upload(api, npz(**images()), name="imgs", bits=3)).status == 201
    grouping = 3 if dataset == "blobs" else 2
    body = {**CONV, "dataset": dataset, "grouping": grouping, **change}
    error = await error_of(await api.post("/jobs", json=body), 422, "validation_error")
    assert error["fields"][0]["field"] == field
    assert message in error["fields"][0]["message"]
    sweep = await api.post("/sweeps", json={"base": body, "grid": {"seed": [0, 1]}})
    error = await error_of(sweep, 422, "invalid_combination")
    assert error["fields"][0]["field"] == field
    assert await store.jobs.collection.count_documents({}) == 0


async def test_a_given_validation_split_is_counted_and_the_encoded_file_served(
    api: TestClient,
) -> None:
    data = blobs(n=400)
    x, y = data["x_train"], data["y_train"]
    resp = await upload(api, npz(x_train=x[:300], y_train=y[:300], x_valid=x[300:],
                                 y_valid=y[300:]), name="withvalid")  # fmt: skip
    record = await resp.json()
    assert resp.status == 201, record
    assert record["shape"]["valid"] == 100 and record["shape"]["image"] is None
    encoded = await api.get(f"/datasets/{record['id']}/encoded")
    assert encoded.status == 200
    body = await encoded.read()
    assert hashlib.sha256(body).hexdigest() == record["encoded"]["sha256"]
    with np.load(io.BytesIO(body)) as z:
        assert len(z["y_valid"]) == 100


async def _partial_upload(store: Store, bucket: str, file_id: ObjectId) -> None:
    """What an upload killed between its chunks and its end leaves: GridFS writes chunks
    (PyMongo's GridIn in batches of up to 32 MB) and the `files` document only on close,
    which never came."""
    chunk = b"x" * (255 * 1024)
    await store.db[f"{bucket}.chunks"].insert_many(
        [{"files_id": file_id, "n": n, "data": chunk} for n in range(3)]
    )


async def test_files_nothing_names_are_removed_once_old(
    api: TestClient, store: Store, tmp_path: Path
) -> None:
    """Retention's pass removes what dead uploads left: chunks of files never finished (in
    every bucket) and a data set's files whose record never came, once a day old; a young
    upload (maybe still under way) and every registered data set's files are kept."""
    record = await _register(api)
    long_ago = datetime.now(UTC) - timedelta(days=2)
    old_partial, young_partial = ObjectId.from_datetime(long_ago), ObjectId()
    for bucket in ("datasets", ARTIFACTS_BUCKET):
        await _partial_upload(store, bucket, old_partial)
    await _partial_upload(store, "datasets", young_partial)
    # An API that died after storing its two files and before the record.
    path = tmp_path / "f.bin"
    path.write_bytes(b"y" * 1000)
    dead = [await store.datasets.store_file(path, "f", "dead-key", r) for r in ("upload", "x")]
    young, _ = await store.datasets.store_file(path, "f", "young-key", "upload")
    for file_id, _ in dead:
        await store.db["datasets.files"].update_one(
            {"_id": file_id}, {"$set": {"uploadDate": long_ago}}
        )
    chunks = store.db["datasets.chunks"]
    assert await chunks.count_documents({"files_id": old_partial}) == 3

    removed = await Retention(store, Policy(logs_days=90, failed_days=30)).run_once()
    assert removed is not None and removed.orphans == 4  # 2 partial files, 2 complete ones
    for bucket in ("datasets", ARTIFACTS_BUCKET):
        assert await store.db[f"{bucket}.chunks"].count_documents({"files_id": old_partial}) == 0
    for file_id, _ in dead:
        assert await store.db["datasets.files"].count_documents({"_id": file_id}) == 0
        assert await chunks.count_documents({"files_id": file_id}) == 0
    assert await chunks.count_documents({"files_id": young_partial}) == 3
    assert await store.db["datasets.files"].count_documents({"_id": young}) == 1
    assert (await api.get(f"/datasets/{record['id']}/file")).status == 200
    assert (await api.get(f"/datasets/{record['id']}/encoded")).status == 200
    again = await Retention(store, Policy(logs_days=90, failed_days=30)).run_once()
    assert again is not None and again.orphans == 0


async def test_a_csv_with_a_byte_order_mark_is_read(api: TestClient) -> None:
    rows = "".join(f"{i % 2},{i % 5},{i % 3}\n" for i in range(60))
    resp = await upload(api, ("\ufefflabel,a,b\n" + rows).encode(), name="bom")
    assert resp.status == 201, await resp.text()


async def test_a_removed_file_is_a_404_not_a_500(api: TestClient, store: Store) -> None:
    record = await _register(api)
    stored_record = await store.datasets.get(ObjectId(record["id"]))
    assert stored_record is not None
    await store.datasets.delete_files(stored_record.encoded.fileId)  # retention, a delete
    for method in (api.get, api.head):
        resp = await method(f"/datasets/{record['id']}/encoded")
        assert resp.status == 404, await resp.text()


async def test_the_same_encoding_spelled_otherwise_is_the_same_data_set(api: TestClient) -> None:
    rows = "".join(f"{i % 2},{i % 5},{'xyz'[i % 3]},{'pq'[i % 2]}\n" for i in range(60))
    body = ("label,a,b,c\n" + rows).encode()
    first = await upload(api, body, name="same", categorical="b,c")
    assert first.status == 201, await first.text()
    for params in ({"labelColumn": "label", "categorical": "c,b"}, {"categorical": "b,c,b"}):
        again = await upload(api, body, name="same", **params)
        assert again.status == 200, (params, await again.text())
        assert (await again.json())["id"] == (await first.json())["id"]

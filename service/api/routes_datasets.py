"""The `/datasets` routes: upload, list, inspect, download and delete a registered data set
(docs/datasets.md).

An upload is streamed to a temporary file (never whole in memory; at most
GATEQUEUE_MAX_DATASET bytes) while its SHA-256 is computed; then it is read, validated and
encoded in a thread (trainer.data.encode: numpy work that must not stall the event loop),
and only a data set that passed every check is stored: its two files, then its record. A
refused upload leaves nothing behind: no record, no GridFS chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web
from pydantic import Field

from service.api.auth import principal_of
from service.api.connections import stream_body
from service.api.errors import ApiError, BodyCutOff, BodyTooLarge, json_response
from service.api.keys import SETTINGS, STORE
from service.api.routes_jobs import ERR_408_BODY, _downloads, _stream_file
from service.api.routing import Param, Query, Reply, Route, not_found, path_id
from service.datasets.record import (
    DatasetRecord,
    EncodedFile,
    Image,
    Shape,
    Source,
    builtins_json,
    dataset_key,
    new_dataset,
)
from service.store.datasets import DATASETS_BUCKET, MAX_LIST
from service.tokens import Role
from trainer.data.catalog import CLASSES, DATASET_NAME_MAX, NAME_PATTERN

log = structlog.get_logger(__name__)

UPLOAD_TYPES = ("application/octet-stream", "application/zip", "text/csv")
# Uploads validated, encoded and stored at once by one API process: each is CPU work in a
# thread with about 3 x trainer.data.encode.WORK_BYTES of temporaries, then GridFS writes
# that buffer up to 32 MB of chunks (PyMongo's GridIn; about 150-200 MB resident while it
# sends them): more wait their turn, so an API stays within its memory limit.
ENCODING_AT_ONCE = 1
_ENCODING = asyncio.Semaphore(ENCODING_AT_ONCE)
_HASH_CHUNK = 4 << 20


class UploadQuery(Query):
    name: str = Field(
        pattern=f"^{NAME_PATTERN}$", max_length=DATASET_NAME_MAX,
        description="The data set's name: letters, digits, `.`, `_`, `-` (a new upload under "
        "a taken name is its next version).",
    )  # fmt: skip
    labelColumn: str | None = Field(
        None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$",
        description="CSV: the label column (default `label`).",
    )  # fmt: skip
    bits: int = Field(8, ge=1, le=255, description="Thermometer thresholds per numeric feature.")
    thresholds: Literal["quantile", "uniform"] = Field(
        "quantile", description="Where the thresholds lie: training-split quantiles, or evenly "
        "between the training minimum and maximum.",
    )  # fmt: skip
    categorical: list[str] = Field(
        default_factory=list,
        description="CSV: columns to one-hot encode even if they look numeric (comma-separated).",
    )
    splitSeed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the test split made when "
                           "the file has none.")  # fmt: skip
    filename: str | None = Field(None, max_length=255, pattern=r"^[^\x00-\x1f\x7f/\\]+$")


class ListQuery(Query):
    name: str | None = Field(None, max_length=DATASET_NAME_MAX, description="Only this name's "
                             "versions.")  # fmt: skip
    limit: int = Field(100, ge=1, le=MAX_LIST)


def _options(query: UploadQuery) -> Any:
    from trainer.data.encode import EncodeOptions  # numpy: loaded on the first upload

    return EncodeOptions(
        bits=query.bits, method=query.thresholds, label_column=query.labelColumn,
        categorical=tuple(query.categorical), split_seed=query.splitSeed,
    )  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _receive(request: web.Request, path: Path, limit: int) -> tuple[str, int]:
    """The body into `path`; (its SHA-256, its length)."""
    digest = hashlib.sha256()
    fh = await asyncio.to_thread(open, path, "wb")

    def write_and_hash(data: bytes) -> None:
        fh.write(data)
        digest.update(data)

    async def write(data: bytes) -> None:
        await asyncio.to_thread(write_and_hash, data)

    try:
        size = await stream_body(request, write, limit)
    except BodyTooLarge as exc:
        raise ApiError(
            413, "dataset_too_large",
            f"the upload has {exc.args[0]} bytes or more: past the limit of {limit} bytes "
            "(GATEQUEUE_MAX_DATASET)",
        ) from None  # fmt: skip
    except BodyCutOff as exc:
        raise ApiError(400, "upload_cut_off", f"the upload was cut off: {exc}") from None
    finally:
        await asyncio.to_thread(fh.close)
    return digest.hexdigest(), size


def _encode(source: Path, target: Path, options: Any, limit: int) -> Any:
    from trainer.data.encode import encode_file
    from trainer.data.errors import BadData

    try:
        return encode_file(source, target, options, limit)
    except BadData as exc:
        code = "dataset_too_large" if exc.status == 413 else "invalid_dataset"
        raise ApiError(exc.status, code, str(exc)) from None


async def upload_dataset(request: web.Request, query: UploadQuery) -> web.Response:
    limit = request.app[SETTINGS].max_dataset
    store = request.app[STORE]
    options = _options(query)
    # Made here, not in a thread: a handler cancelled (the client went away) while a thread
    # made it would leave it behind.
    tmp = Path(tempfile.mkdtemp(prefix="gatequeue-upload-"))
    try:
        source = tmp / "upload"
        sha256, size = await _receive(request, source, limit)
        key = dataset_key(sha256, options.to_json())
        existing = await store.datasets.by_key(key)
        if existing is not None:
            return _answer(existing, 200)
        async with _ENCODING:
            return await _register(request, query, options, source, sha256, size, key)
    finally:
        await _discard(tmp)


async def _register(
    request: web.Request,
    query: UploadQuery,
    options: Any,
    source: Path,
    sha256: str,
    size: int,
    key: str,
) -> web.Response:
    """Validate and encode the received upload, then store its files and record."""
    principal = principal_of(request)
    limit = request.app[SETTINGS].max_dataset
    store = request.app[STORE]
    existing = await store.datasets.by_key(key)  # registered while this one waited its turn
    if existing is not None:
        return _answer(existing, 200)
    encoded = source.with_name("encoded.npz")
    summary = await asyncio.to_thread(_encode, source, encoded, options, limit)
    if query.name in CLASSES and summary.classes != CLASSES[query.name]:
        raise ApiError(
            422, "invalid_dataset",
            f"{query.name} is a built-in with {CLASSES[query.name]} classes; this file has "
            f"{summary.classes}: register it under another name",
        )  # fmt: skip
    encoded_sha = await asyncio.to_thread(_sha256, encoded)
    filename = query.filename or f"{query.name}.{summary.format}"
    file_id, _ = await store.datasets.store_file(source, filename, key, "upload")
    stored = [file_id]
    try:
        enc_id, enc_size = await store.datasets.store_file(
            encoded, f"{query.name}.encoded.npz", key, "encoded"
        )
        stored.append(enc_id)
        record = new_dataset(
            name=query.name, sha256=sha256, size=size, classes=summary.classes,
            shape=Shape(inputs=summary.inputs, train=summary.train, valid=summary.valid,
                        test=summary.test, image=_image(summary.image)),
            encoding=summary.encoding(options),
            source=Source(format=summary.format, filename=query.filename),
            created_by=principal.name, file_id=file_id,
            encoded=EncodedFile(fileId=enc_id, sha256=encoded_sha, bytes=enc_size),
            key=key,
        )  # fmt: skip
        record, created = await store.datasets.insert(record)
    except BaseException:
        await store.datasets.delete_files(*stored)
        raise
    if not created:  # the same data set, stored by a concurrent upload
        await store.datasets.delete_files(*stored)
        return _answer(record, 200)
    log.info("data set registered", name=record.name, version=record.version,
             bytes=size, inputs=summary.inputs, classes=summary.classes)  # fmt: skip
    return _answer(record, 201)


def _image(image: Any) -> Image | None:
    if image is None:
        return None
    return Image(height=image.height, width=image.width, channels=image.channels)


async def _discard(tmp: Path) -> None:
    """The upload's temporary files, whatever became of it."""
    await asyncio.shield(asyncio.to_thread(shutil.rmtree, tmp, True))


def _answer(record: DatasetRecord, status: int) -> web.Response:
    return json_response(
        record.to_json(), status=status, headers={"Location": f"/datasets/{record.id}"}
    )


async def list_datasets(request: web.Request, query: ListQuery) -> web.Response:
    records = await request.app[STORE].datasets.list(name=query.name, limit=query.limit)
    builtins = [b for b in builtins_json() if query.name in (None, b["name"])]
    return json_response({"datasets": [r.to_json() for r in records] + builtins})


async def _existing(request: web.Request) -> DatasetRecord:
    oid = path_id(request, "dataset")
    record = await request.app[STORE].datasets.get(oid)
    if record is None:
        raise not_found("dataset", oid)
    return record


async def get_dataset(request: web.Request) -> web.Response:
    return json_response((await _existing(request)).to_json())


async def dataset_file(request: web.Request) -> web.StreamResponse:
    record = await _existing(request)
    name = record.source.filename or f"{record.name}-{record.version}.{record.source.format}"
    return await _stream_file(request, DATASETS_BUCKET, record.fileId, name)


async def dataset_encoded(request: web.Request) -> web.StreamResponse:
    """The encoded file a worker hands its trainer: what `python -m trainer.evaluate` and
    `python -m trainer.circuit verify` read with `--dataset-file`."""
    record = await _existing(request)
    name = f"{record.name}-{record.version}.encoded.npz"
    return await _stream_file(request, DATASETS_BUCKET, record.encoded.fileId, name)


async def delete_dataset(request: web.Request) -> web.Response:
    """Its uploader or an admin; never while a Pending or Running job trains on it, or a
    random or TPE sweep will still make runs on it."""
    record = await _existing(request)
    principal = principal_of(request)
    if not principal.may(Role.ADMIN) and record.createdBy != principal.name:
        raise ApiError(
            403, "forbidden",
            f"data set {record.name}@{record.version} was uploaded by "
            f"{record.createdBy or 'nobody named'}; deleting another user's needs an admin token",
        )  # fmt: skip
    store = request.app[STORE]
    job = await store.jobs.uses_dataset(record.id)
    if job is not None:
        raise ApiError(
            409, "dataset_in_use",
            f"job {job.id} ({job.status.value}) trains on {record.name}@{record.version}; "
            "delete it once no Pending or Running job does",
        )  # fmt: skip
    sweep = await store.sweeps.searching_dataset(record.id)
    if sweep is not None:
        raise ApiError(
            409, "dataset_in_use",
            f"sweep {sweep.id} still makes runs on {record.name}@{record.version}; delete "
            "it once the sweep has made its trials, or cancel the sweep",
        )  # fmt: skip
    await store.datasets.delete(record)
    return json_response({"deleted": str(record.id)})


DATASET_ID = Param(
    "id", "path", "Data set id (24 hex digits). Anything else is answered 404.", required=True
)
ERR_404 = Reply(404, "No data set with this id.", "Error")

ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/datasets", upload_dataset, "uploadDataset", "Register a data set",
        role=Role.SUBMIT, query=UploadQuery, content_types=UPLOAD_TYPES,
        description=(
            "The body is the file itself: an `.npz` (`x_train`, `y_train`, optionally "
            "`x_valid`/`y_valid`, `x_test`/`y_test`) or a CSV with a header. It is streamed, "
            "validated and encoded to bits (docs/datasets.md); nothing is stored unless every "
            "check passes."
        ),
        replies=(
            Reply(201, "Registered; `Location` points at it.", headers=("Location",)),
            Reply(200, "The same bytes with the same options were registered before: that "
                       "data set.", headers=("Location",)),
            Reply(400, "The upload was cut off (code `upload_cut_off`).", "Error"),
            ERR_408_BODY,
            Reply(413, "The file (or an npz member once decompressed) is larger than "
                       "GATEQUEUE_MAX_DATASET (code `dataset_too_large`).", "Error"),
            Reply(415, "Content-Type is not one of " + ", ".join(UPLOAD_TYPES) + ".", "Error"),
            Reply(422, "A bad query parameter, or a file that is no usable data set (code "
                       "`invalid_dataset`, the message says what is wrong).", "Error"),
        ),
    ),
    Route(
        "GET", "/datasets", list_datasets, "listDatasets",
        "Registered data sets, newest first, then the built-ins", query=ListQuery,
        replies=(Reply(200, "`{datasets: [...]}`; built-ins have `builtin: true`."),
                 Reply(422, "A query parameter is invalid.", "Error")),
    ),
    Route(
        "GET", "/datasets/{id}", get_dataset, "getDataset", "One data set",
        params=(DATASET_ID,), replies=(Reply(200, "The data set's record."), ERR_404),
    ),
    *_downloads(
        "/datasets/{id}/file", dataset_file, "DatasetFile", "a data set's uploaded file",
        (DATASET_ID,), "The file as it was uploaded.", ERR_404,
    ),
    *_downloads(
        "/datasets/{id}/encoded", dataset_encoded, "DatasetEncoded",
        "a data set's encoded file", (DATASET_ID,),
        "The encoded file (the bits a trainer reads; docs/datasets.md, \"The encoded file\"), "
        "for `--dataset-file` of trainer.evaluate and trainer.circuit verify.", ERR_404,
    ),
    Route(
        "DELETE", "/datasets/{id}", delete_dataset, "deleteDataset", "Delete a data set",
        params=(DATASET_ID,), role=Role.SUBMIT,
        description="Its uploader or an admin; refused while a Pending or Running job uses it.",
        replies=(
            Reply(200, "Deleted, with its files."),
            Reply(403, "Another user's data set needs an admin token.", "Error"),
            ERR_404,
            Reply(409, "A Pending or Running job trains on it (code `dataset_in_use`).",
                  "Error"),
        ),
    ),
)  # fmt: skip

"""Stored documents as the JSON the API, the WebSockets and the CLI show.

One function per document kind, so every surface agrees on field names and on how ids and
times look: ids are hex strings, times are ISO-8601 UTC with a `Z`. Internal bookkeeping
(`idempotencyKey`, `requestHash`) never leaves the server: a key is a client's secret-ish
retry token, and the hash is only there to spot a reused key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

# Public job fields, in the order clients see them. A whitelist rather than a blacklist:
# a field another module adds to the document stays private until it is named here (and
# in the OpenAPI model `service.api.schemas.Job`).
JOB_FIELDS: tuple[str, ...] = (
    "name",
    "status",
    "version",
    "hyperparameters",
    "createdAt",
    "updatedAt",
    "startedAt",
    "finishedAt",
    "worker",
    "leaseExpiresAt",
    "attempt",
    "maxAttempts",
    "cancelRequested",
    "exitCode",
    "error",
    "latestMetrics",
    "artifacts",
)


def iso(dt: datetime) -> str:
    """Millisecond precision is what MongoDB stores; a naive datetime is taken as UTC
    (a client opened without `tz_aware` hands those out)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    else:
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Types JSON takes as they are; checked by exact type first, the cheap common case.
_PLAIN: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def to_jsonable(value: Any) -> Any:
    """BSON values (ObjectId, datetime) inside nested dicts and lists, made JSON-safe."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict:
        return {
            k if type(k) is str else str(k): v if type(v) in _PLAIN else to_jsonable(v)
            for k, v in value.items()
        }
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def job_to_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The public view of a `jobs` document; missing optional fields come out as null."""
    out: dict[str, Any] = {"id": str(doc["_id"])}
    get = doc.get
    for key in JOB_FIELDS:
        value = get(key)
        out[key] = value if type(value) in _PLAIN else to_jsonable(value)
    out["cancelRequested"] = bool(out["cancelRequested"])
    out["artifacts"] = out["artifacts"] or []
    return out


def log_batch_to_json(batch: dict[str, Any]) -> dict[str, Any]:
    """A `job_logs` batch as `{seq, stream, lines, ts}` (the WebSocket tail's fields)."""
    ts = batch.get("ts")
    return {
        "seq": batch["seq"],
        "stream": batch["stream"],
        "lines": list(batch["lines"]),
        "ts": iso(ts) if isinstance(ts, datetime) else None,
    }


def metrics_to_json(doc: dict[str, Any]) -> dict[str, Any]:
    """A `job_metrics` document without its ids: `{epoch, epochs, <key>: number..., ts}`."""
    return {k: to_jsonable(v) for k, v in doc.items() if k not in ("_id", "jobId")}

"""Pydantic models of the API's responses, for the OpenAPI document and the tests.

The request model is `service.jobs.request.JobRequest` and the job is
`service.jobs.record.Job`; these describe the rest of what the server writes. Responses are
not validated at run time (that would be work on every request for nothing); the tests and
schemathesis hold the server to them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.jobs.record import Job

JobId = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-f]{24}$",
        description="Hex of the job's MongoDB ObjectId.",
        examples=["665f1c2e9b1e8a3d4c2b1a00"],
    ),
]


class JobList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[Job] = Field(description="Newest first.")  # type: ignore[valid-type]
    next: JobId | None = Field(
        description="Pass as `after` for the next page; null on the last page.",
    )


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the bad field, or `body`.")
    message: str
    type: str = Field(description="Machine-readable kind, e.g. missing, extra_forbidden.")


class Combination(BaseModel):
    index: int = Field(ge=0, description="Its index in the sweep's order (grid x runs, random).")
    values: dict[str, Any] = Field(description="Its overrides of the sweep's base.")
    fields: list[FieldError]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. validation_error.")
    message: str
    fields: list[FieldError] | None = Field(
        None, description="Present on 422: one entry per bad field."
    )
    combination: Combination | None = Field(
        None, description="POST /sweeps: the first combination that is not a valid job."
    )
    combinations: list[Combination] | None = Field(
        None, description="POST /sweeps: the bad combinations (the first ten)."
    )


class Error(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class LogBatch(BaseModel):
    seq: int = Field(ge=0, description="Index of the batch's first line in the job's log.")
    stream: Literal["stdout", "stderr", "system"]
    lines: list[str]
    ts: str | None


class Logs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobId: JobId
    from_: int = Field(alias="from", ge=0)
    next: int = Field(ge=0, description="The `from` to ask for next (the seq after the last line).")
    batches: list[LogBatch]


class Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobId: JobId
    metrics: list[dict[str, Any]] = Field(
        description="One entry per epoch: {epoch, epochs, <key>: number..., ts}."
    )


class RemovedCounts(BaseModel):
    jobs: int = Field(ge=0, description="Job records removed.")
    logBatches: int = Field(ge=0, description="Stored log batches removed.")
    metrics: int = Field(ge=0, description="Per-epoch metrics documents removed.")
    files: int = Field(ge=0, description="Files (networks, checkpoints) removed, chunks included.")


class Deleted(BaseModel):
    """`DELETE /jobs/{id}` and `DELETE /sweeps/{id}`: what was removed."""

    id: str = Field(description="The job's or sweep's id.")
    removed: RemovedCounts


class Whoami(BaseModel):
    name: str | None = Field(description="The token's name (null: open API or not signed in).")
    role: Literal["read", "submit", "admin"] | None
    authenticated: bool
    open: bool = Field(description="The API needs no token at all.")
    expiresAt: str | None = Field(None, description="When the session ends (POST /session).")


class SlotHours(BaseModel):
    gpu: float = Field(ge=0, description="Hours of Running time on GPU slots.")
    cpu: float = Field(ge=0, description="Hours of Running time on CPU slots.")


class UsageRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(description="The token name that submitted the jobs (null: open API).")
    sweepId: str | None = Field(None, description="The sweep (rows of `sweeps` only).")
    jobs: dict[str, int] = Field(description="Jobs of the period by status (every status named).")
    slotHours: SlotHours = Field(
        description="Running time x slots in the period (a run holds one slot)."
    )
    logBytes: int = Field(ge=0, description="UTF-8 bytes of the jobs' stored log lines.")
    fileBytes: int = Field(ge=0, description="Bytes of the jobs' stored files and checkpoints.")


class UsageReport(BaseModel):
    """`GET /usage`: per user and per sweep (an admin sees everyone; others themselves)."""

    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(description="The period's start (null: since the beginning).")
    users: list[UsageRow]
    sweeps: list[UsageRow]


class Delivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deliveryId: str = Field(
        description="Sent as X-Gatequeue-Delivery and in the body: "
        "receivers drop a second copy by it."
    )
    event: Literal["finished", "succeeded", "failed", "cancelled"]
    source: Literal["notify", "server"] = Field(
        description="The job's or sweep's own `notify`, or a server hook (GATEQUEUE_WEBHOOKS)."
    )
    target: str = Field(description="The URL's scheme and host (its path is not shown).")
    format: Literal["json", "slack"]
    state: Literal["pending", "delivered", "failed"]
    attempts: int = Field(ge=0, description="Tries made.")
    lastStatus: int | None = Field(description="The HTTP status of the last try.")
    lastError: str | None = Field(description="Why the last try failed.")
    createdAt: str | None
    updatedAt: str | None
    deliveredAt: str | None


class Deliveries(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The job's or sweep's id.")
    deliveries: list[Delivery]


class Health(BaseModel):
    status: Literal["ok", "ready"]


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Job,
    JobList,
    Error,
    Logs,
    Metrics,
    Health,
)

"""The job record: one typed model, read from MongoDB and rendered as the API's JSON.

The job document of docs/design.md is this model: the store builds new documents with it,
every reader validates stored documents into it, and the API, the WebSockets and the CLI
show `to_json()`. The OpenAPI response schema is its serialization schema, so the document
cannot drift from what is sent. Each run option (service.jobs.options) is a field of `Job`,
declared with the option's type and checked against the options by a test. Fields only the
server needs (`idempotencyKey`, `requestHash`) are not part of it, so they never leave the
server.

In JSON, ids are hex strings and times ISO-8601 UTC with millisecond precision and a `Z`
(what MongoDB stores); in a document they are ObjectIds and datetimes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from bson import ObjectId
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

from service.jobs.notify import Notify
from service.jobs.options import RUN_OPTIONS
from service.jobs.status import Status


def new_attempt_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Millisecond precision, as MongoDB stores it: a document read back equals the one
    written."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(dt: datetime) -> str:
    """A naive datetime is taken as UTC (a client opened without `tz_aware` hands those out)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    else:
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _object_id(value: Any) -> ObjectId:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    raise ValueError(f"not an ObjectId: {value!r}")


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise ValueError(f"not a datetime: {value!r}")


Id = Annotated[
    ObjectId,
    PlainValidator(_object_id),
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "pattern": "^[0-9a-f]{24}$", "examples": ["665f1c2e9b1e8a3d4c2b1a00"]}
    ),
]
Time = Annotated[
    datetime,
    PlainValidator(_datetime),
    PlainSerializer(iso, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "examples": ["2025-01-31T12:00:00.000Z"]}
    ),
]


# Fields of the record computed when a job is read, never stored.
COMPUTED_FIELDS: tuple[str, ...] = ("queuePosition", "waitingFor")


class Record(BaseModel):
    """Stored documents may carry fields this version does not know (written by a newer
    one, or private to the server): they are ignored, never an error."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class WorkerRef(Record):
    """The worker that claimed the job, and the slot it runs it on."""

    id: str
    host: str
    gpu: str


class Artifact(Record):
    name: str = Field(description="Path inside the run's output dir, e.g. `network.json`.")
    fileId: Id = Field(description="GridFS file id in `bucket`.")
    length: int = Field(ge=0, description="Bytes.")
    bucket: str = Field(description="GridFS bucket name (`artifacts`).")


class Checkpoint(Record):
    """A checkpoint of a run in GridFS (bucket `checkpoints`): training resumes from it."""

    fileId: Id = Field(description="GridFS file id in the `checkpoints` bucket.")
    epoch: int = Field(ge=0, description="Epochs completed when it was written.")
    step: int = Field(0, ge=0, description="Steps done in the next epoch (0: at an epoch's end).")
    length: int = Field(ge=0, description="Bytes.")
    attemptId: str = Field(description="The attempt that wrote it.")
    createdAt: Time


class ResumedFrom(Record):
    """Where the current attempt started: the checkpoint it resumed from."""

    epoch: int
    step: int = 0
    attemptId: str


class DatasetRef(Record):
    """The registered data set a job trains on, resolved when it was submitted: a later
    upload under the same name never changes it (docs/datasets.md)."""

    id: Id = Field(description="The data set's id (`GET /datasets/{id}`).")
    name: str
    version: int = Field(ge=1)
    sha256: str = Field(description="SHA-256 of the uploaded file: the data set's content.")


class MemoryEstimate(Record):
    """Peak memory the run needs (trainer.memory), by device kind, in bytes."""

    cpu: int = Field(ge=0)
    cuda: int = Field(ge=0)


class Circuit(Record):
    """The logic circuit a successful run compiled to (trainer.circuit.build_circuit)."""

    gates: int = Field(ge=0, description="Gates of the trained network.")
    gatesLive: int = Field(ge=0, description="Gates left after optimization.")
    depth: int = Field(ge=0, description="Longest input-to-output path, in gates.")
    imagesPerS: float = Field(ge=0, description="Single-threaded throughput of the C library.")
    verified: bool = Field(description="The C library and Verilog agree with the network.")
    disagreements: int = Field(0, ge=0, description="Samples where they did not.")
    gateHistogram: dict[str, int] = Field(description="{gate name: count}, 16 gate kinds.")


class Result(Record):
    """The kept network's numbers (the SUMMARY's, trainer.protocol.Result): what the job's
    headline, its network.json and its circuit are (docs/trainer.md, "Validation and the
    kept network")."""

    epoch: int = Field(ge=0, description="The epoch whose network was kept.")
    val_acc_discrete: float | None = Field(
        None, description="Its discrete validation accuracy (null: no validation split)."
    )
    test_acc_discrete: float = Field(description="Its discrete test accuracy.")
    test_acc: float = Field(description="Its relaxed test accuracy.")
    discretization_gap: float = Field(description="test_acc - test_acc_discrete.")


class StoppedEarly(Record):
    """Why a sweep's scheduler ended a run before its `epochs` (docs/sweeps.md)."""

    epoch: int = Field(ge=0, description="The last epoch it trained.")
    rung: int | None = Field(
        None, ge=0, description="Its ASHA rung (0: the first); null for median."
    )
    reason: str = Field(description="`asha`, `median` or `cancelled`, and why.")


class JobWarning(Record):
    """Something a researcher must know about a Succeeded run (service.jobs.warnings)."""

    code: str = Field(description="`discretization_gap` or `collapsed`.")
    message: str


class JobRecord(Record):
    """The fields every job has; `Job` adds the run options."""

    id: Id = Field(validation_alias=AliasChoices("_id", "id"), description="The job's id.")
    status: Status
    version: int = Field(0, ge=0, description="Bumped by every change of status, worker, lease.")
    hyperparameters: dict[str, Any] = Field(
        description="The validated training options (trainer.options), without the run options."
    )
    submittedBy: str | None = Field(
        None, description="The name of the token that submitted it (null: an open API)."
    )
    createdAt: Time
    updatedAt: Time
    startedAt: Time | None = None
    finishedAt: Time | None = None
    worker: WorkerRef | None = None
    leaseExpiresAt: Time | None = None
    attempt: int = Field(0, ge=0)
    attemptId: str | None = Field(
        None,
        description="Unique per claim; every later write of that attempt is conditioned on it.",
    )
    cancelRequested: bool = False
    exitCode: int | None = None
    error: str | None = None
    latestMetrics: dict[str, Any] | None = Field(
        None, description="The last EPOCH line's numbers, e.g. {epoch, epochs, train_loss, ...}."
    )
    artifacts: list[Artifact] = Field(
        default_factory=list,
        description="Files of a successful run (the trained network); download each from "
        "`/jobs/{id}/artifacts/{name}`. Empty until the job Succeeded.",
    )
    checkpoint: Checkpoint | None = Field(
        None, description="The latest checkpoint; a re-queued job resumes from it."
    )
    checkpoints: list[Checkpoint] = Field(
        default_factory=list, description="The checkpoints kept (the last two), oldest first."
    )
    resumedFrom: ResumedFrom | None = Field(
        None, description="The checkpoint the current (or last) attempt resumed from."
    )
    memoryEstimate: MemoryEstimate | None = Field(
        None, description="The estimated peak memory of a run (trainer.memory)."
    )
    datasetRef: DatasetRef | None = Field(
        None,
        description="The registered data set `hyperparameters.dataset` resolved to (null: a "
        "built-in).",
    )
    sweepId: Id | None = Field(None, description="The sweep the job belongs to (docs/sweeps.md).")
    sweepIndex: int | None = Field(None, ge=0, description="Its combination's index in the sweep.")
    sweepMaxParallel: int | None = Field(
        None, ge=1, description="Its sweep's cap on jobs Running at once (null: none)."
    )
    circuit: Circuit | None = Field(
        None, description="The circuit a Succeeded run compiled to (docs/circuits.md)."
    )
    result: Result | None = Field(
        None, description="A Succeeded run's kept network: epoch, val and test accuracies."
    )
    warnings: list[JobWarning] = Field(
        default_factory=list,
        description="A Succeeded run's warnings (`discretization_gap`, `collapsed`).",
    )
    etaS: float | None = Field(
        None, ge=0, description="A Running job's estimated seconds to finish (null otherwise)."
    )
    targetEpoch: int | None = Field(
        None,
        ge=1,
        description="A sweep's scheduler's next rung: the run checkpoints and stops at this "
        "epoch for a decision (null: it trains to `epochs`).",
    )
    stoppedEarly: StoppedEarly | None = Field(
        None,
        description="A run its sweep's scheduler stopped: Succeeded, its metrics and "
        'checkpoint kept, no circuit (docs/sweeps.md, "Schedulers").',
    )
    queuePosition: int | None = Field(
        None,
        ge=0,
        description="Pending jobs only, in GET /jobs/{id}: how many Pending jobs come before "
        "it in claim order (priority, then age). Not stored.",
    )
    waitingFor: str | None = Field(
        None,
        description="Pending jobs only, in GET /jobs/{id}: what it waits for (`a free slot`, "
        "`maxParallel of its sweep`, `a worker with enough memory`). Not stored.",
    )

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Self:
        return cls.model_validate(doc)

    def to_doc(self) -> dict[str, Any]:
        """The document as stored: `_id`, ObjectIds and datetimes."""
        doc = self.model_dump(exclude=set(COMPUTED_FIELDS))
        doc["_id"] = doc.pop("id")
        return doc

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def finished(self) -> bool:
        return self.status.finished


def _run_option(name: str) -> Any:
    """The pydantic field of a run option (service.jobs.options): its default, bounds and help."""
    (option,) = (o for o in RUN_OPTIONS if o.name == name)
    return option.pydantic_field(request=False)[1]


# The fields every job has and the run options: each run option is a field declared here with
# its option's type, and its default, bounds and help taken from the option. The docstring is
# the OpenAPI schema's description. tests/jobs/test_record.py fails while a run option has no
# field here or a field disagrees with its option.
class Job(JobRecord):
    """A job as stored and as the API shows it."""

    name: str | None = _run_option("name")
    maxAttempts: int = _run_option("maxAttempts")
    priority: int = _run_option("priority")
    checkpointIntervalS: float = _run_option("checkpointIntervalS")
    keep: Literal["best", "last"] = _run_option("keep")
    notify: Notify | None = _run_option("notify")


def new_job(
    hyperparameters: dict[str, Any],
    run_options: dict[str, Any],
    *,
    submitted_by: str | None = None,
    memory_estimate: MemoryEstimate | None = None,
    dataset_ref: DatasetRef | None = None,
) -> Job:
    """A Pending job with every field set, so readers never meet a missing key."""
    now = utcnow()
    return Job(
        id=ObjectId(),
        status=Status.PENDING,
        hyperparameters=dict(hyperparameters),
        submittedBy=submitted_by,
        createdAt=now,
        updatedAt=now,
        memoryEstimate=memory_estimate,
        datasetRef=dataset_ref,
        **run_options,
    )


def job_json(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as the API's JSON (the common case of reading and showing)."""
    return Job.from_doc(doc).to_json()

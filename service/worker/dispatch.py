"""The worker's view of the queue: a change stream on `jobs`, resumable across restarts.

Each worker follows the stream on its own and stores its own resume token under its own
name in `stream_offsets`: a shared token would let one worker's progress skip events another
has not seen. The stream is a wake-up signal with the job attached, not the source of truth:
every time it is (re)opened the worker also catches up from a query of Pending jobs, so an
event lost in any way (a cut, an expired token, a crash between handling and saving) costs
latency, never a job.
"""

from __future__ import annotations

from typing import Any

from service.jobs.status import Status
from service.mongo.changestream import ResumableChangeStream, StoredTokens
from service.store import Store

# How long a getMore waits for an event: also how often an idle stream's token advances.
MAX_AWAIT_MS = 1000


def offset_name(worker_id: str) -> str:
    return f"worker:{worker_id}"


def pipeline(worker_id: str) -> list[dict[str, Any]]:
    """Only what a worker acts on: a job that is (again) Pending, or a cancel of its own run.

    Filtering on `fullDocument` works with `updateLookup` on real MongoDB; lease renewals
    and metric updates of other workers' runs never reach this worker.
    """
    return [
        {
            "$match": {
                "$or": [
                    {"operationType": "invalidate"},  # `jobs` dropped: the stream must end
                    {
                        "operationType": {"$in": ["insert", "update", "replace"]},
                        "fullDocument.status": Status.PENDING.value,
                        # a sweep's jobs are held until the whole sweep is stored
                        "fullDocument.held": {"$exists": False},
                    },
                    {
                        "operationType": {"$in": ["update", "replace"]},
                        "fullDocument.status": Status.RUNNING.value,
                        "fullDocument.cancelRequested": True,
                        "fullDocument.worker.id": worker_id,
                    },
                ]
            }
        }
    ]


def job_feed(store: Store, worker_id: str) -> ResumableChangeStream:
    """The worker's stream, its token stored under the worker's name."""
    stages = pipeline(worker_id)

    async def opener(token: Any | None) -> Any:
        return await store.jobs.watch(stages, resume_after=token, max_await_ms=MAX_AWAIT_MS)

    tokens = StoredTokens(store.offsets, offset_name(worker_id))
    return ResumableChangeStream(f"jobs:{worker_id}", opener, tokens)

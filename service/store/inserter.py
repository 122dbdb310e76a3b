"""Group commit for job submissions: concurrent POST /jobs share one `insert_many`.

Profiling the submit path (bench/api_submit.py) showed that a PyMongo `insert_one` costs
the API process about as much CPU as all the rest of the request together: command
building, server selection, pool checkout, one socket send and one receive per document.
Sending the documents that arrive during the same event-loop turn as one unordered
`insert_many` pays that once per batch instead of once per job. Under no load a batch is
one document and waits for nothing (the flush is scheduled for the next loop turn, not on
a timer); under load batches grow by themselves.

Semantics stay those of one insert per job: each caller's future resolves only once its
document is written (acknowledged with the client's write concern), `ordered=False` makes
documents independent of each other, and a document the server refuses fails only its own
request. Submissions with an Idempotency-Key do not come here: they go through
`JobStore.insert`, whose duplicate-key handling decides races between retries.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, WriteError

Document = dict[str, Any]

log = structlog.get_logger(__name__)

MAX_BATCH = 256  # documents per insert_many; a job document is ~600 bytes of BSON
MAX_IN_FLIGHT = 4  # batches written at once; later arrivals gather into the next batch


class JobInserter:
    """Batches `insert(doc)` calls made in the same loop turn into one `insert_many`."""

    def __init__(
        self,
        collection: AsyncCollection,
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._collection = collection
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[Document, asyncio.Future[None]]] = []
        self._scheduled = False
        self._writes: set[asyncio.Task[None]] = set()
        self.batches = 0  # for tests and metrics: how many insert_many calls were made
        self.documents = 0

    async def insert(self, doc: Document) -> None:
        """Return once `doc` is written; raise what the server said if it was refused."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((doc, future))
        self._schedule(loop)
        # Shielded: a client that disconnects must not tear its document out of a batch
        # others wait on; the write completes (or fails) for everyone together.
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_retrieve)  # nobody else will read its outcome
            raise

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and len(self._writes) < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and len(self._writes) < self._max_in_flight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            task = asyncio.get_running_loop().create_task(self._write(batch))
            self._writes.add(task)
            task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if self._pending:
            self._schedule(asyncio.get_running_loop())

    async def _write(self, batch: list[tuple[Document, asyncio.Future[None]]]) -> None:
        self.batches += 1
        self.documents += len(batch)
        try:
            await self._collection.insert_many([doc for doc, _ in batch], ordered=False)
        except BulkWriteError as exc:
            refused = {e["index"]: e for e in exc.details.get("writeErrors", [])}
            concern = exc.details.get("writeConcernErrors") or []
            for i, (_, future) in enumerate(batch):
                if future.done():
                    continue
                if i in refused:
                    err = refused[i]
                    future.set_exception(WriteError(err.get("errmsg", ""), err.get("code"), err))
                elif concern:
                    future.set_exception(exc)
                else:
                    future.set_result(None)
        except asyncio.CancelledError:
            self._fail(batch, ConnectionAbortedError("the server is shutting down"))
            raise
        except Exception as exc:
            self._fail(batch, exc)
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    @staticmethod
    def _fail(batch: list[tuple[Document, asyncio.Future[None]]], exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    async def close(self) -> None:
        """Let writes in flight finish (their callers are waiting on them)."""
        while True:
            if self._pending:
                self._flush()
            if not self._writes:
                log.info("job inserter closed", batches=self.batches, documents=self.documents)
                return
            await asyncio.gather(*self._writes, return_exceptions=True)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()

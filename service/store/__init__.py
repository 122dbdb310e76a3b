"""Every read, write and watch of gatequeue's MongoDB collections (docs/design.md,
"Collections"), one class per collection, reached through one `Store`.

No other module calls a collection: the API, the WebSockets, the worker and the log sink
ask the store, so each query exists once, with its index beside it.
"""

from __future__ import annotations

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from service.store.datasets import DatasetStore
from service.store.deliveries import DeliveryStore
from service.store.files import FileStore
from service.store.jobs import JobStore
from service.store.leases import LeaseStore
from service.store.logs import LogStore
from service.store.metrics import MetricStore
from service.store.offsets import OffsetStore
from service.store.queue import QueueView
from service.store.removal import Removal
from service.store.sessions import SessionStore
from service.store.sweeps import SweepStore
from service.store.usage import UsageStore
from service.store.workers import WorkerStore

__all__ = ["Store"]


class Store:
    """The collections of one database; holds no state of its own beyond handles."""

    def __init__(self, client: AsyncMongoClient, db_name: str) -> None:
        self.client = client
        self.db: AsyncDatabase = client[db_name]
        self.jobs = JobStore(self.db["jobs"])
        self.logs = LogStore(self.db["job_logs"], owns=self.jobs.owns)
        self.metrics = MetricStore(self.db["job_metrics"])
        self.offsets = OffsetStore(self.db["stream_offsets"])
        self.files = FileStore(self.db)
        self.datasets = DatasetStore(self.db["datasets"], self.files)
        self.sessions = SessionStore(self.db["sessions"])
        self.sweeps = SweepStore(self.db["sweeps"])
        self.workers = WorkerStore(self.db["workers"])
        self.queue = QueueView(self.jobs, self.sweeps, self.workers)
        self.leases = LeaseStore(self.db["leases"])
        self.usage = UsageStore(self.db)
        self.deliveries = DeliveryStore(self.db["webhook_deliveries"])
        self.removal = Removal(self.jobs, self.logs, self.metrics, self.files, self.deliveries)

    async def ensure_indexes(self) -> None:
        """Idempotent; every process calls it at start so no deploy step is needed."""
        await self.jobs.ensure_indexes()
        await self.logs.ensure_indexes()
        await self.metrics.ensure_indexes()
        await self.sessions.ensure_indexes()
        await self.sweeps.ensure_indexes()
        await self.files.ensure_indexes()
        await self.leases.ensure_indexes()
        await self.datasets.ensure_indexes()
        await self.deliveries.ensure_indexes()

    async def ping(self) -> None:
        await self.db.command("ping")

    async def close(self) -> None:
        """Let submissions in flight reach the database."""
        await self.jobs.inserter.close()

"""A worker's cache of registered data sets (docs/datasets.md, "Workers").

The encoded file of a data set is kept as `<folder>/<sha256>.npz`, named by its content:
whatever job, name or version asks for it, the same bytes are one file. Every use checks
the file's SHA-256 (a file damaged on disk, or cut short by a crash, is fetched again), and
concurrent runs asking for the same file share one check and one download. Above
`max_bytes` the least recently used files go, never one a run is using.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog
from bson import ObjectId

from service.jobs.record import DatasetRef
from service.store import Store
from service.store.errors import FileGone
from service.worker.errors import DatasetUnavailable

log = structlog.get_logger(__name__)

_HASH_CHUNK = 4 << 20
SUFFIX = ".npz"


def file_sha256(path: Path) -> str | None:
    """The file's SHA-256, or None where there is no file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return digest.hexdigest()


class DataCache:
    def __init__(
        self,
        store: Store,
        folder: Path,
        max_bytes: int,
        on_lookup: Callable[[str], None] | None = None,
    ) -> None:
        """`on_lookup("hit" | "miss")` for each run's look-up (the worker's metrics): a hit
        is a file found cached and intact, or one another run is fetching already."""
        self._on_lookup = on_lookup
        self.store = store
        self.folder = folder
        self.max_bytes = max_bytes
        self.downloads = 0  # files fetched from the store since start (tests, logs)
        self._inflight: dict[str, asyncio.Future[Path]] = {}
        self._users: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def use(self, ref: DatasetRef) -> AsyncIterator[Path]:
        """The local path of the job's data set, kept (never evicted) until the block ends.
        Raises DatasetUnavailable, or PyMongoError while the store cannot be reached."""
        record = await self.store.datasets.get(ref.id)
        if record is None:
            raise DatasetUnavailable(
                f"data set {ref.name}@{ref.version} ({ref.id}) was deleted; it cannot be fetched"
            )
        sha = record.encoded.sha256
        self._users[sha] += 1
        try:
            future = self._inflight.get(sha)
            if future is not None:
                self._lookup("hit")
            else:
                future = asyncio.ensure_future(self._fetch(sha, record.encoded.fileId))
                self._inflight[sha] = future
                future.add_done_callback(lambda _: self._inflight.pop(sha, None))
            yield await asyncio.shield(future)
        finally:
            self._users[sha] -= 1
            if self._users[sha] <= 0:
                del self._users[sha]

    def _lookup(self, outcome: str) -> None:
        if self._on_lookup is not None:
            self._on_lookup(outcome)

    async def _fetch(self, sha: str, file_id: ObjectId) -> Path:
        path = self.folder / f"{sha}{SUFFIX}"
        found = await asyncio.to_thread(file_sha256, path)
        if found == sha:
            self._lookup("hit")
            await asyncio.to_thread(os.utime, path)  # recently used: evicted last
            await asyncio.to_thread(self._evict, sha)  # what a run in use kept, if any
            return path
        if found is not None:
            log.warning("cached data set damaged; fetching it again", path=str(path),
                        sha256=found, expected=sha)  # fmt: skip
        self._lookup("miss")
        part = path.with_name(f"{path.name}.fetch")
        try:
            await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
            size = await self.store.datasets.download(file_id, part)
            got = await asyncio.to_thread(file_sha256, part)
            if got != sha:
                raise DatasetUnavailable(
                    f"the stored data set file {file_id} has SHA-256 {got}, its record says {sha}"
                )
            await asyncio.to_thread(part.replace, path)
        except FileGone:  # its file was removed (the data set deleted): no retry brings it
            raise DatasetUnavailable(
                f"the stored data set file {file_id} is gone (was the data set deleted?)"
            ) from None
        except OSError as exc:  # a full or unwritable disk: the run fails saying so
            raise DatasetUnavailable(
                f"the data set could not be fetched into {self.folder}: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(part.unlink, True)
        self.downloads += 1
        log.info("data set fetched", sha256=sha, bytes=size)
        await asyncio.to_thread(self._evict, sha)
        return path

    def _evict(self, keep: str) -> None:
        """Least recently used first, until the cache fits `max_bytes` (a file in use, or
        the one just fetched, stays even if that leaves it above)."""
        files = []
        for entry in self.folder.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                files.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in files)
        for _, size, entry in sorted(files):
            if total <= self.max_bytes:
                break
            sha = entry.name.removesuffix(SUFFIX)
            if sha == keep or self._users.get(sha):
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                log.info("cached data set evicted", sha256=sha, bytes=size)
            total -= size

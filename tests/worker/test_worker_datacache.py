"""A worker's data set cache (service/worker/datacache.py): by SHA-256, verified on every
use, one download shared by concurrent runs, least recently used files evicted."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from worker_helpers import TINY_HP, MakeWorker, finished, trainer, wait_job

from service.datasets.record import EncodedFile, Shape, Source, new_dataset
from service.jobs.options import RUN_OPTIONS
from service.jobs.record import DatasetRef, new_job
from service.jobs.status import Status
from service.store import Store
from service.worker.datacache import DataCache
from service.worker.errors import DatasetUnavailable
from service.worker.prom import WorkerMetrics

RUN_DEFAULTS = {o.name: o.default for o in RUN_OPTIONS}


async def register(store: Store, tmp_path: Path, content: bytes, name: str = "d") -> DatasetRef:
    """A record whose encoded file holds `content` (the cache never parses it)."""
    path = tmp_path / f"{name}-{hashlib.sha256(content).hexdigest()[:8]}"
    path.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    file_id, size = await store.datasets.store_file(path, "f", sha, "encoded")
    record = new_dataset(
        name=name, sha256=sha, size=size, classes=2,
        shape=Shape(inputs=8, train=1, test=1), encoding={}, source=Source(format="npz"),
        created_by=None, file_id=file_id,
        encoded=EncodedFile(fileId=file_id, sha256=sha, bytes=size), key=sha,
    )  # fmt: skip
    stored, created = await store.datasets.insert(record)
    assert created
    return stored.ref()


async def test_concurrent_runs_share_one_download(store: Store, tmp_path: Path) -> None:
    content = os.urandom(3 << 20)
    ref = await register(store, tmp_path, content)
    metrics = WorkerMetrics()
    cache = DataCache(store, tmp_path / "cache", 1 << 30, on_lookup=metrics.note_data_cache)
    started = asyncio.Event()
    release = asyncio.Event()

    async def run() -> bytes:
        async with cache.use(ref) as path:
            started.set()
            await release.wait()
            return path.read_bytes()

    runs = [asyncio.create_task(run()) for _ in range(2)]
    await started.wait()
    release.set()
    assert await asyncio.gather(*runs) == [content, content]
    assert cache.downloads == 1
    async with cache.use(ref):  # cached now: no download
        pass
    assert cache.downloads == 1
    # the worker's metrics: one miss (the download), a hit for the run that shared it and
    # one for the run that found it cached
    text = metrics.render().decode()
    assert 'gatequeue_worker_data_cache_total{outcome="miss"} 1.0' in text
    assert 'gatequeue_worker_data_cache_total{outcome="hit"} 2.0' in text


async def test_a_damaged_file_is_detected_and_fetched_again(store: Store, tmp_path: Path) -> None:
    content = os.urandom(100_000)
    ref = await register(store, tmp_path, content)
    lookups: list[str] = []
    cache = DataCache(store, tmp_path / "cache", 1 << 30, on_lookup=lookups.append)
    async with cache.use(ref) as path:
        pass
    damaged = bytearray(content)
    damaged[5000] ^= 0xFF
    path.write_bytes(bytes(damaged))
    async with cache.use(ref) as again:
        assert again == path
        assert again.read_bytes() == content
    assert cache.downloads == 2
    assert lookups == ["miss", "miss"]  # a damaged file is no hit


async def test_least_recently_used_evicted_above_the_limit(store: Store, tmp_path: Path) -> None:
    refs = [await register(store, tmp_path, os.urandom(10_000), name=f"d{i}") for i in range(3)]
    cache = DataCache(store, tmp_path / "cache", 25_000)
    paths = []
    for i, ref in enumerate(refs):
        async with cache.use(ref) as path:
            os.utime(path, (1000 + i, 1000 + i))  # a clock that moves on between uses
            paths.append(path)
    assert not paths[0].exists()
    assert paths[1].exists() and paths[2].exists()


async def test_a_file_in_use_is_never_evicted(store: Store, tmp_path: Path) -> None:
    refs = [await register(store, tmp_path, os.urandom(10_000), name=f"d{i}") for i in range(2)]
    cache = DataCache(store, tmp_path / "cache", 5_000)
    async with cache.use(refs[0]) as first:
        async with cache.use(refs[1]) as second:
            assert first.exists() and second.exists()
    async with cache.use(refs[0]):
        pass
    assert not second.exists()


async def test_a_deleted_data_set_is_unavailable(store: Store, tmp_path: Path) -> None:
    ref = await register(store, tmp_path, b"x" * 100)
    record = await store.datasets.get(ref.id)
    assert record is not None
    await store.datasets.delete(record)
    cache = DataCache(store, tmp_path / "cache", 1 << 30)
    with pytest.raises(DatasetUnavailable, match="was deleted"):
        async with cache.use(ref):
            pass


async def test_a_cache_that_cannot_be_written_fails_the_fetch(store: Store, tmp_path: Path) -> None:
    ref = await register(store, tmp_path, b"y" * 100)
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    cache = DataCache(store, blocker / "cache", 1 << 30)
    with pytest.raises(DatasetUnavailable, match="could not be fetched into"):
        async with cache.use(ref):
            pass
    async with DataCache(store, tmp_path / "cache", 1 << 30).use(ref) as path:
        assert path.read_bytes() == b"y" * 100


async def test_two_runs_starting_at_once_on_one_worker_fetch_the_data_set_once(
    store: Store, make_worker: MakeWorker, tmp_path: Path
) -> None:
    """Two jobs on the same registered data set, claimed together by a worker with two
    slots: the worker fetches the file once, both trainers run (at the same time) on it."""
    ref = await register(store, tmp_path, os.urandom(2 << 20))
    hp = {**TINY_HP, "dataset": "d", "grouping": 2}
    jobs = []
    for _ in range(2):
        job, _ = await store.jobs.insert(new_job(dict(hp), RUN_DEFAULTS, dataset_ref=ref))
        jobs.append(job)
    worker = await make_worker(
        trainer_cmd=trainer("steady"), slots=["0", "1"], env={**os.environ, "GQ_EPOCH_S": "0.5"}
    )
    done = [await wait_job(store, job.id, finished) for job in jobs]
    assert [d.status for d in done] == [Status.SUCCEEDED, Status.SUCCEEDED]
    a, b = done
    assert a.startedAt is not None and b.startedAt is not None
    assert a.finishedAt is not None and b.finishedAt is not None
    assert a.startedAt < b.finishedAt and b.startedAt < a.finishedAt  # they overlapped
    assert worker.data_cache.downloads == 1
    cached = list((tmp_path / "worker1" / "datasets" / "registered").glob("*.npz"))
    assert len(cached) == 1

"""A worker's data set cache (service/worker/datacache.py): by SHA-256, verified on every
use, one download shared by concurrent runs, least recently used files evicted."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from service.datasets.record import EncodedFile, Shape, Source, new_dataset
from service.jobs.record import DatasetRef
from service.store import Store
from service.worker.datacache import DataCache
from service.worker.errors import DatasetUnavailable
from service.worker.prom import WorkerMetrics


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

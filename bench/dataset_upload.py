"""Registering a data set of MNIST's size, and a worker's first and second fetch of it.

    python bench/dataset_upload.py [--rows 60000] [--features 784] [--bits 1]

1. A MongoDB: `MONGODB_URI` if set, else the embedded server; the API in its own process
   (as bench/api_submit.py starts them).
2. A generated npz of `--rows` x `--features` uint8 values (MNIST's size by default) is
   uploaded with the asyncio client (`upload_dataset`, streamed from disk) while the API's
   anonymous resident memory (RssAnon: its heap; the pages of the memory-mapped arrays are
   the kernel's to reclaim) is sampled every 5 ms: its growth while the body streams in
   (goal: under 64 MB whatever the file size) and while the upload is validated, encoded
   and stored (the first upload also imports numpy into the API, about 10-20 MB).
3. The baseline: the same file stored in GridFS directly (FileStore.upload), the floor under
   any upload through the API.
4. A worker's cache (service/worker/datacache.py) fetches the encoded file: the first run's
   time (download and SHA-256) and the second's (SHA-256 of the cached file only).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from api_submit import ROOT, _free_port, api_process, machine, mongodb  # noqa: F401

from service.client import GateQueueClient
from service.jobs.record import DatasetRef
from service.mongo.connect import connect
from service.store import Store
from service.worker.datacache import DataCache


def anon_rss(pid: int) -> int:
    """The process's anonymous resident memory (its heap, not the pages of files it maps,
    which the kernel reclaims at will): what an upload costs the API."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc (Linux only)")


class RssSampler:
    """The peak anonymous resident memory of a process, sampled in a thread, per phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = anon_rss(pid)
        self.peaks: dict[str, int] = {}
        self.phase = "upload"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = anon_rss(self.pid)
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            time.sleep(0.005)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth(self, phase: str) -> float:
        return max(0, self.peaks.get(phase, self.base) - self.base) / 2**20


async def run(args: argparse.Namespace, uri: str, where: str, tmp: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, args.rows)
    x = (rng.random((args.rows, args.features)) * 255).astype(np.uint8)
    path = tmp / "big.npz"
    np.savez(path, x_train=x, y_train=y)
    del x
    size_mb = path.stat().st_size / 1e6
    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    port = _free_port()
    client = connect(uri)
    store = Store(client, db_name)
    try:
        await store.ensure_indexes()
        t0 = time.perf_counter()
        await store.files.upload("bench", path, "big.npz", {})
        raw_s = time.perf_counter() - t0
        with api_process(uri, db_name, port, None) as pid:
            async with GateQueueClient(f"http://127.0.0.1:{port}") as api:
                with RssSampler(pid) as rss:
                    sent_at: list[float] = []

                    def progress(sent: int, total: int) -> None:
                        if sent == total and not sent_at:
                            sent_at.append(time.perf_counter())
                            rss.phase = "encode"

                    t0 = time.perf_counter()
                    record = await api.upload_dataset(
                        path, name="big", bits=args.bits, progress=progress
                    )
                    total_s = time.perf_counter() - t0
                body_s = (sent_at[0] if sent_at else t0 + total_s) - t0
        cache = DataCache(store, tmp / "cache", 1 << 40)
        ref = DatasetRef.model_validate({k: record[k] for k in ("id", "name", "version", "sha256")})
        fetches = []
        for _ in range(2):
            t0 = time.perf_counter()
            async with cache.use(ref):
                pass
            fetches.append(time.perf_counter() - t0)
        await client.drop_database(db_name)
    finally:
        await client.close()
    print(f"machine: {machine()}")
    print(f"mongodb: {where}")
    print(f"file: {args.rows} x {args.features} uint8 npz, {size_mb:.1f} MB; "
          f"encoded: {record['shape']['inputs']} input bits, "
          f"{record['encoded']['bytes'] / 1e6:.1f} MB")  # fmt: skip
    print(f"upload (body): {body_s:.2f} s, {size_mb / body_s:.0f} MB/s; "
          f"API memory growth {rss.growth('upload'):.1f} MB (goal < 64 MB)")  # fmt: skip
    print(f"validate + encode + store: {total_s - body_s:.2f} s; "
          f"API memory growth {rss.growth('encode'):.1f} MB")  # fmt: skip
    print(f"total: {total_s:.2f} s, {size_mb / total_s:.0f} MB/s")
    print(f"baseline (GridFS upload of the file, no API): {raw_s:.2f} s, "
          f"{size_mb / raw_s:.0f} MB/s; ratio API total / baseline: "
          f"{total_s / raw_s:.2f}")  # fmt: skip
    print(f"worker fetch: first run {fetches[0]:.2f} s (download + SHA-256), "
          f"second run {fetches[1]:.3f} s (cached: SHA-256 only)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--bits", type=int, default=1, help="thermometer thresholds")
    args = parser.parse_args()
    with mongodb() as (uri, where), tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, uri, where, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A finished run's files: listed on the job, streamed by the API from GridFS, saved by the
client and by `gatequeue download`. The files are uploaded the way the worker uploads them
(`service.worker.artifacts.upload_outputs`) and the job finished by compare-and-set."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest
from live_helpers import LiveApi, gatequeue, running_job

from service.client import GateQueueClient, GateQueueError
from service.jobs.record import Checkpoint, utcnow
from service.jobs.status import Status
from service.store.files import CHECKPOINTS_BUCKET
from service.worker.artifacts import upload_outputs

MODEL = {"format": "gatequeue-difflogic", "layers": [[0, 1, 6]]}


async def succeeded_with_files(live_api: LiveApi, tmp_path: Path) -> str:
    out = tmp_path / "run-output"
    (out / "extra").mkdir(parents=True)
    (out / "model.json").write_text(json.dumps(MODEL))
    (out / "extra" / "big.bin").write_bytes(os.urandom(3 << 20))  # several GridFS chunks
    store = live_api.store
    job = await running_job(store)
    uploaded = await upload_outputs(store.files, job.id, 1, out)
    done = await store.jobs.finish(
        job, Status.SUCCEEDED, exit_code=0, extra={"artifacts": [a.model_dump() for a in uploaded]}
    )
    assert done is not None
    return str(job.id)


async def test_job_lists_its_artifacts(
    live_api: LiveApi, client: GateQueueClient, tmp_path: Path
) -> None:
    job_id = await succeeded_with_files(live_api, tmp_path)
    job = await client.get(job_id)
    assert [(a["name"], a["length"]) for a in job["artifacts"]] == [
        ("extra/big.bin", 3 << 20),
        ("model.json", len(json.dumps(MODEL))),
    ]
    pending = await client.submit(gateOptimizer="softmax", gates=40, networkLayers=1)
    assert pending["artifacts"] == []


async def test_download_streams_the_bytes(
    live_api: LiveApi, client: GateQueueClient, tmp_path: Path
) -> None:
    job_id = await succeeded_with_files(live_api, tmp_path)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{live_api.url}/jobs/{job_id}/artifacts/model.json",
            headers={"X-Request-ID": "dl-1"},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Request-ID"] == "dl-1"
        assert resp.headers["Content-Disposition"] == 'attachment; filename="model.json"'
        assert json.loads(await resp.read()) == MODEL

    dest = tmp_path / "saved"
    dest.mkdir()
    path = await client.download(job_id, "extra/big.bin", dest)
    assert path == dest / "big.bin"
    assert path.read_bytes() == (tmp_path / "run-output" / "extra" / "big.bin").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["big.bin"]  # no .part left behind


async def test_unknown_artifact_is_404_and_leaves_no_file(
    live_api: LiveApi, client: GateQueueClient, tmp_path: Path
) -> None:
    job_id = await succeeded_with_files(live_api, tmp_path)
    with pytest.raises(GateQueueError) as info:
        await client.download(job_id, "nope.json", tmp_path / "nope.json")
    assert (info.value.status, info.value.code) == (404, "artifact_not_found")
    assert not (tmp_path / "nope.json").exists()
    assert not (tmp_path / "nope.json.part").exists()
    with pytest.raises(GateQueueError) as info:
        await client.download("0" * 24, "model.json", tmp_path)
    assert info.value.status == 404


async def test_cli_download(live_api: LiveApi, tmp_path: Path) -> None:
    job_id = await succeeded_with_files(live_api, tmp_path)
    out_dir = tmp_path / "cli"
    rc, out, err = await gatequeue(live_api.url, "download", job_id, "-o", str(out_dir))
    assert rc == 0, err
    assert out.split() == [str(out_dir / "extra" / "big.bin"), str(out_dir / "model.json")]
    assert json.loads((out_dir / "model.json").read_text()) == MODEL

    rc, _, err = await gatequeue(live_api.url, "download", job_id, "missing.bin")
    assert rc != 0
    assert "no artifact 'missing.bin'" in err
    assert "model.json" in err  # says what there is

    rc, out, _ = await gatequeue(live_api.url, "show", job_id)
    assert "model.json" in out


async def test_the_latest_checkpoint_downloads_from_the_client_and_the_cli(
    live_api: LiveApi, client: GateQueueClient, tmp_path: Path
) -> None:
    store = live_api.store
    job = await running_job(store)
    with pytest.raises(GateQueueError) as none_yet:
        await client.download_checkpoint(str(job.id), tmp_path)
    assert "has no checkpoint" in str(none_yet.value)
    rc, _, err = await gatequeue(live_api.url, "download", str(job.id), "checkpoint")
    assert rc == 2 and "has no checkpoint" in err
    data = os.urandom(300_000)
    src = tmp_path / "ck.pt"
    src.write_bytes(data)
    file_id, length = await store.files.upload(
        CHECKPOINTS_BUCKET, src, f"{job.id}/x/epoch-3-step-0.pt", {"jobId": job.id}
    )
    assert job.attemptId is not None
    checkpoint = Checkpoint(fileId=file_id, epoch=3, length=length, attemptId=job.attemptId,
                            createdAt=utcnow())  # fmt: skip
    assert await store.jobs.add_checkpoint(job, checkpoint) == []
    saved = await client.download_checkpoint(str(job.id), tmp_path)
    assert saved.name == f"{job.id}-epoch-3-step-0.pt"
    assert await asyncio.to_thread(saved.read_bytes) == data
    out = tmp_path / "cli"
    rc, stdout, err = await gatequeue(
        live_api.url, "download", str(job.id), "checkpoint", "-o", str(out)
    )
    assert rc == 0, err
    assert await asyncio.to_thread(Path(stdout.strip()).read_bytes) == data


async def test_downloads_answer_head_and_one_range(live_api: LiveApi, tmp_path: Path) -> None:
    """Resumable downloads (issue 26, defect 8): HEAD gives the length and `Accept-Ranges`
    without a body; one `Range` gets 206 with those bytes (across GridFS chunks, from an
    offset, the last n), a range past the end 416, several ranges or a stale `If-Range` the
    whole file. The checkpoint download behaves the same."""
    job_id = await succeeded_with_files(live_api, tmp_path)
    data = (tmp_path / "run-output" / "extra" / "big.bin").read_bytes()
    size = len(data)
    url = f"{live_api.url}/jobs/{job_id}/artifacts/extra/big.bin"
    async with aiohttp.ClientSession() as http:
        async with http.head(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(size)
            assert resp.headers["Accept-Ranges"] == "bytes"
            assert resp.headers["Content-Disposition"] == 'attachment; filename="big.bin"'
            etag = resp.headers["ETag"]
            assert await resp.read() == b""
        # (Range, status, the bytes it gets): 255 KiB is GridFS's chunk size.
        cases = [
            ("bytes=100-299999", 206, data[100:300_000]),
            ("bytes=3000000-", 206, data[3_000_000:]),
            ("bytes=-10", 206, data[-10:]),
            (f"bytes={size - 1}-{size + 50}", 206, data[-1:]),
            ("bytes=0-0,5-9", 200, data),  # several ranges: the whole file
            ("bytes=9-5", 200, data),  # malformed: ignored
        ]
        for header, status, expected in cases:
            async with http.get(url, headers={"Range": header}) as resp:
                assert resp.status == status, header
                body = await resp.read()
                assert body == expected, header
                if status == 206:
                    first = (
                        size - len(expected)
                        if header.startswith("bytes=-")
                        else int(header[6:].split("-")[0])
                    )
                    assert resp.headers["Content-Range"] == (
                        f"bytes {first}-{first + len(expected) - 1}/{size}"
                    )
        async with http.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}) as resp:
            assert resp.status == 206 and await resp.read() == data[:10]
        async with http.get(url, headers={"Range": "bytes=0-9", "If-Range": '"x"'}) as resp:
            assert resp.status == 200 and await resp.read() == data
        for header in (f"bytes={size}-", "bytes=-0"):
            async with http.get(url, headers={"Range": header}) as resp:
                assert resp.status == 416, header
                error = (await resp.json())["error"]
                assert error["code"] == "range_not_satisfiable"
                assert resp.headers["Content-Range"] == f"bytes */{size}"
                assert str(size) in error["message"]
        async with http.head(f"{live_api.url}/jobs/{job_id}/artifacts/nope") as resp:
            assert resp.status == 404 and await resp.read() == b""

    store = live_api.store
    job = await running_job(store)
    ck = os.urandom(300_000)
    src = tmp_path / "ck.pt"
    src.write_bytes(ck)
    file_id, length = await store.files.upload(
        CHECKPOINTS_BUCKET, src, f"{job.id}/x/epoch-1-step-0.pt", {"jobId": job.id}
    )
    assert job.attemptId is not None
    await store.jobs.add_checkpoint(job, Checkpoint(
        fileId=file_id, epoch=1, step=0, length=length, attemptId=job.attemptId,
        createdAt=utcnow(),
    ))  # fmt: skip
    ck_url = f"{live_api.url}/jobs/{job.id}/checkpoint"
    async with aiohttp.ClientSession() as http:
        async with http.head(ck_url) as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == str(len(ck))
            assert await resp.read() == b""
        async with http.get(ck_url, headers={"Range": "bytes=299990-"}) as resp:
            assert resp.status == 206 and await resp.read() == ck[299_990:]
            assert resp.headers["Content-Range"] == f"bytes 299990-299999/{len(ck)}"

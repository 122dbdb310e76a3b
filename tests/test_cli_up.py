"""`gatequeue up --demo`, what `make run` starts: MongoDB (here the test's), the API and a
worker in one process, then a real training run on CPU that ends Succeeded with its
circuit; Ctrl-C stops it all with exit 0. And the refusal where it could not submit."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from service.store import Store

pytestmark = pytest.mark.slow  # the demo trains 10 epochs of digits, about 20 s

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(mongo_uri: str, db_name: str, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "MONGODB_URI": mongo_uri,
        "GATEQUEUE_DB": db_name,
        "GATEQUEUE_DATA_DIR": str(tmp_path / "data"),
        "GATEQUEUE_LOG_FORMAT": "json",
    }
    for name in ("GATEQUEUE_API_TOKEN", "GATEQUEUE_TOKENS_FILE"):
        env.pop(name, None)
    return env


async def test_up_demo_runs_a_training_job_to_its_circuit(
    mongo_uri: str, db_name: str, store: Store, tmp_path: Path
) -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "up", "--demo", "--port", str(port),
        "--state-dir", str(tmp_path / "state"),
        cwd=REPO, env=_env(mongo_uri, db_name, tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(300):
            while not any(line.startswith("demo run ") for line in seen):
                raw = await proc.stdout.readline()
                assert raw, f"gatequeue up ended early: {seen}"
                seen.append(raw.decode().strip())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
        async with asyncio.timeout(60):
            await proc.communicate()
    assert proc.returncode == 0
    assert any(line.startswith(f"gatequeue is up: http://127.0.0.1:{port}/") for line in seen)
    assert any(line.startswith("submitted a demo training run") for line in seen)
    ended = next(line for line in seen if line.startswith("demo run "))
    assert ended.startswith("demo run Succeeded: ") and "test_acc_discrete=" in ended, seen

    jobs = await store.jobs.list(limit=10)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.status == "Succeeded" and job.name == "demo: digits, sparsemax_noise"
    assert job.circuit is not None and job.circuit.verified
    assert {"network.json", "network.c", "network.v"} <= {a.name for a in job.artifacts}
    assert await store.workers.live_slots() == []  # the worker said goodbye on Ctrl-C


async def test_up_demo_with_only_a_tokens_file_says_why_it_cannot_submit(
    mongo_uri: str, db_name: str, store: Store, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text("{}")
    env = {**_env(mongo_uri, db_name, tmp_path), "GATEQUEUE_TOKENS_FILE": str(tokens)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "up", "--demo", "--port", str(_free_port()),
        "--state-dir", str(tmp_path / "state"), cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "--demo submits a job, which needs a token" in err.decode()
    assert "GATEQUEUE_API_TOKEN" in err.decode()
    assert await store.jobs.list(limit=10) == []  # nothing started, nothing stored

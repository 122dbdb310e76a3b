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


async def test_up_on_a_port_another_server_holds_refuses_and_submits_nothing_there(
    mongo_uri: str, db_name: str, store: Store, tmp_path: Path
) -> None:
    """Before: `up --demo` on a port another gatequeue held printed "gatequeue is up" with the
    other server's URL, submitted its demo job to it, then died of EADDRINUSE with a
    25-line traceback. Now it refuses before starting anything, in one line."""
    from aiohttp import web

    requests: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        requests.append(f"{request.method} {request.path}")
        if request.path == "/readyz":
            return web.json_response({"status": "ready"})
        return web.json_response({"id": "f" * 24, "status": "Pending"}, status=201)

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(other, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.cli", "up", "--demo", "--port", str(port),
            "--state-dir", str(tmp_path / "state"),
            cwd=REPO, env=_env(mongo_uri, db_name, tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        await runner.cleanup()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"port {port}" in lines[0] and "--port" in lines[0]
    assert "gatequeue is up" not in out.decode()
    assert not [r for r in requests if r.startswith("POST")], requests
    assert await store.jobs.list(limit=10) == []


async def test_up_on_a_terminal_prints_its_url_last_and_stops_without_a_traceback(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    """On a terminal (a pty here): the worker's start-up lines come before the URL, request
    lines are debug (none shown at info), and Ctrl-C with a run in progress ends with exit 0
    and no traceback. Before: request lines buried the URL, and a trainer still running at
    the stop was reaped after the event loop closed ("Event loop is closed" traceback)."""
    import pty

    import aiohttp

    port = _free_port()
    env = {**_env(mongo_uri, db_name, tmp_path), "GATEQUEUE_LOG_FORMAT": "console"}
    controller, terminal = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "up", "--port", str(port),
        "--state-dir", str(tmp_path / "state"), cwd=REPO, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=terminal, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    text = ""
    changed = asyncio.Event()

    def readable() -> None:
        nonlocal text
        try:
            text += os.read(controller, 65536).decode(errors="replace")
        except OSError:  # the terminal's other end closed: the process has ended
            asyncio.get_running_loop().remove_reader(controller)
        changed.set()

    async def until(needle: str) -> None:
        while needle not in text:
            changed.clear()
            await changed.wait()

    loop = asyncio.get_running_loop()
    loop.add_reader(controller, readable)
    try:
        async with asyncio.timeout(120):
            await until("gatequeue is up")
            url = f"http://127.0.0.1:{port}/"
            async with aiohttp.ClientSession() as http:
                for path in ("", "healthz", "jobs"):
                    async with http.get(url + path) as resp:
                        assert resp.status == 200
                body = {"gateOptimizer": "softmax", "gates": 40, "networkLayers": 2,
                        "grouping": 10, "epochs": 200, "dataset": "digits"}  # fmt: skip
                async with http.post(url + "jobs", json=body) as resp:
                    assert resp.status == 201
            await until("trainer started")
            proc.send_signal(signal.SIGINT)
            await proc.wait()
            await until("worker stopped")
    finally:
        loop.remove_reader(controller)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(controller)
    assert proc.returncode == 0, text
    before = text.partition("gatequeue is up")[0]
    assert "worker starting" in before and "api listening" in before
    assert "service.api.access" not in text
    assert "Traceback" not in text and "background task encountered an error" not in text, text


def test_up_help_documents_the_port() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "up", "--help"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "--port" in out and "8080" in out

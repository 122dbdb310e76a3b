"""A run's circuit through the whole queue: submitted over HTTP, trained by a real worker
running the real trainer on CPU, the job ends with a verified `circuit` and its
network.c/.h/.v downloadable next to network.json (docs/circuits.md "In every run")."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from live_helpers import LiveApi, gatequeue

from service.client import GateQueueClient
from service.worker import Worker
from trainer.circuit.ops import GATE_NAMES

pytestmark = pytest.mark.slow  # one real training run of a few seconds

HP: dict[str, Any] = {
    "gateOptimizer": "softmax", "gates": 200, "networkLayers": 2, "residualLayers": 0,
    "epochs": 2, "dataset": "digits", "grouping": 10, "batchSize": 64, "seed": 1,
}  # fmt: skip


async def test_a_run_through_the_queue_ends_with_its_verified_circuit(
    live_api: LiveApi,
    client: GateQueueClient,
    start_worker: Callable[..., Awaitable[Worker]],
    tmp_path: Path,
) -> None:
    await start_worker(trainer_cmd=None, env=None)  # `python -m trainer`, as deployed
    job = await client.submit(**HP)
    done = await client.wait(job["id"], timeout_s=240)
    logs = [entry.line async for entry in client.logs(done["id"], follow=False)]
    assert done["status"] == "Succeeded", logs

    circuit = done["circuit"]
    assert circuit["verified"] is True and circuit["disagreements"] == 0
    assert circuit["gates"] == 200 + 200  # two layers of 200 (the last one rounded to 10s)
    assert 0 < circuit["gatesLive"] <= circuit["gates"]
    assert circuit["depth"] >= 1 and circuit["imagesPerS"] > 0
    assert list(circuit["gateHistogram"]) == list(GATE_NAMES)
    assert sum(circuit["gateHistogram"].values()) == circuit["gates"]
    assert any(line.startswith("circuit: ") and "verified" in line for line in logs), logs

    names = {a["name"] for a in done["artifacts"]}
    assert {"network.json", "network.c", "network.h", "network.v"} <= names
    assert not any(name.endswith(".so") for name in names)  # built for that machine only
    c_file = await client.download(done["id"], "network.c", tmp_path / "network.c")
    await client.download(done["id"], "network.h", tmp_path / "network.h")
    v_file = await client.download(done["id"], "network.v", tmp_path / "network.v")
    assert "module" in v_file.read_text() and "endmodule" in v_file.read_text()
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is not None:  # what was downloaded is a C source that compiles on its own
        compiled = await asyncio.create_subprocess_exec(
            cc, "-c", "-O1", str(c_file), "-o", str(tmp_path / "network.o"),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, errors = await compiled.communicate()
        assert compiled.returncode == 0, errors.decode()

    code, out, err = await gatequeue(live_api.url, "show", done["id"])
    assert code == 0, err
    assert f"{circuit['gatesLive']} live" in out and "verified" in out

"""Registered data sets through the whole queue: made in the test, registered with
`gatequeue data add`, trained on by a real worker running the real trainer on CPU
(docs/datasets.md)."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_helpers import LiveApi, gatequeue

from service.client import GateQueueClient
from service.worker import Worker

pytestmark = pytest.mark.slow  # real (tiny) training runs

HP: dict[str, Any] = {
    "gateOptimizer": "softmax", "gates": 120, "networkLayers": 2, "residualLayers": 0,
    "epochs": 12, "batchSize": 32, "learningRate": 0.05, "groupSumTau": 10, "seed": 0,
}  # fmt: skip


def blobs_npz(path: Path, seed: int = 0, features: int = 6) -> bytes:
    """Three classes around their own centres: easy for a small network."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 600)
    centres = rng.normal(0, 5, (3, features))
    x = centres[y] + rng.normal(0, 1, (600, features))
    buf = io.BytesIO()
    np.savez(buf, x_train=x.astype(np.float32), y_train=y)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def tabular_csv(path: Path) -> bytes:
    """Two classes told apart by a numeric column and a categorical one."""
    rng = np.random.default_rng(1)
    lines = ["hours,sector,score,income"]
    for _ in range(500):
        rich = bool(rng.integers(0, 2))
        hours = rng.normal(50 if rich else 30, 5)
        sector = rng.choice(["gov", "private"] if rich else ["farm", "self"])
        lines.append(f"{hours:.1f},{sector},{rng.normal(0, 1):.3f},{'>50K' if rich else '<=50K'}")
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    return data


def read(path: str) -> bytes:
    return Path(path).read_bytes()


async def logs_of(client: GateQueueClient, job_id: str) -> list[str]:
    return [entry.line async for entry in client.logs(job_id, follow=False)]


async def test_npz_and_csv_trained_through_the_queue(
    live_api: LiveApi,
    client: GateQueueClient,
    start_worker: Callable[..., Awaitable[Worker]],
    tmp_path: Path,
) -> None:
    npz_bytes = blobs_npz(tmp_path / "blobs.npz")
    rc, out, err = await gatequeue(
        live_api.url, "data", "add", str(tmp_path / "blobs.npz"), "--name", "blobs", "--bits", "4"
    )
    assert rc == 0, err
    assert "registered blobs@1" in out and "3 classes, 24 input bits" in out
    csv_bytes = tabular_csv(tmp_path / "adult.csv")
    rc, out, err = await gatequeue(
        live_api.url, "data", "add", str(tmp_path / "adult.csv"), "--name", "adult",
        "--label-column", "income", "--bits", "4",
    )  # fmt: skip
    assert rc == 0, err

    rc, out, _ = await gatequeue(live_api.url, "data", "ls", "--json")
    listed = [json.loads(line) for line in out.splitlines()]
    assert [d["name"] for d in listed][:2] == ["adult", "blobs"]
    assert {"digits", "mnist"} <= {d["name"] for d in listed if d.get("builtin")}

    again = await client.upload_dataset(tmp_path / "blobs.npz", name="blobs", bits=4)
    assert again["status"] == 200 and again["version"] == 1

    await start_worker(trainer_cmd=None, env=None)  # `python -m trainer`, as deployed
    blobs_job = await client.submit(**HP, dataset="blobs", grouping=3)
    adult_job = await client.submit(**HP, dataset="adult", grouping=2)
    for job, chance in ((blobs_job, 1 / 3), (adult_job, 1 / 2)):
        done = await client.wait(job["id"], timeout_s=240)
        assert done["status"] == "Succeeded", await logs_of(client, job["id"])
        accuracy = done["latestMetrics"]["test_acc_discrete"]
        assert accuracy > chance + 0.25, (job["hyperparameters"]["dataset"], accuracy)

    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    rc, out, err = await gatequeue(live_api.url, "data", "download", "blobs", "-o", str(out_dir))
    assert rc == 0, err
    assert read(out.strip()) == npz_bytes
    rc, out, err = await gatequeue(live_api.url, "data", "download", "adult", "-o", str(out_dir))
    assert read(out.strip()) == csv_bytes

    # The run's network, evaluated again from the data set's encoded file, as a user would.
    network = await client.download(blobs_job["id"], "network.json", out_dir / "network.json")
    rc, out, err = await gatequeue(
        live_api.url, "data", "download", "blobs", "--encoded", "-o", str(out_dir)
    )
    assert rc == 0, err
    encoded = Path(out.strip())
    assert encoded.name == "blobs-1.encoded.npz"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trainer.evaluate", str(network), "--dataset-file", str(encoded),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    evaluated = dict(p.split("=") for p in stdout.decode().split())
    done = await client.get(blobs_job["id"])
    assert float(evaluated["test_acc_discrete"]) == pytest.approx(
        done["result"]["test_acc_discrete"], abs=1e-4
    )


async def test_a_job_pinned_to_version_1_keeps_it(
    live_api: LiveApi,
    client: GateQueueClient,
    start_worker: Callable[..., Awaitable[Worker]],
    tmp_path: Path,
) -> None:
    blobs_npz(tmp_path / "v1.npz", features=6)
    v1 = await client.upload_dataset(tmp_path / "v1.npz", name="blobs", bits=4)
    pinned = await client.submit(**{**HP, "epochs": 1}, dataset="blobs@1", grouping=3)
    blobs_npz(tmp_path / "v2.npz", seed=1, features=8)
    v2 = await client.upload_dataset(tmp_path / "v2.npz", name="blobs", bits=4)
    assert (v1["version"], v2["version"]) == (1, 2)
    latest = await client.submit(**{**HP, "epochs": 1}, dataset="blobs", grouping=3)
    await start_worker(trainer_cmd=None, env=None)
    for job, inputs in ((pinned, 24), (latest, 32)):
        done = await client.wait(job["id"], timeout_s=240)
        lines = await logs_of(client, job["id"])
        assert done["status"] == "Succeeded", lines
        assert any("data loaded" in line and f"inputs={inputs}" in line for line in lines), lines


async def test_a_given_validation_split_is_what_the_run_validates_on(
    live_api: LiveApi,
    client: GateQueueClient,
    start_worker: Callable[..., Awaitable[Worker]],
    tmp_path: Path,
) -> None:
    """An npz with its own x_valid: the queued run validates on those 120 samples (its
    validFraction ignored), and its kept network is chosen on them."""
    blobs_npz(tmp_path / "all.npz")
    with np.load(tmp_path / "all.npz") as z:
        x, y = z["x_train"], z["y_train"]
    buf = io.BytesIO()
    np.savez(buf, x_train=x[:480], y_train=y[:480], x_valid=x[480:], y_valid=y[480:])
    (tmp_path / "given.npz").write_bytes(buf.getvalue())
    record = await client.upload_dataset(tmp_path / "given.npz", name="given", bits=4)
    assert record["shape"]["valid"] == 120
    await start_worker(trainer_cmd=None, env=None)
    job = await client.submit(**{**HP, "epochs": 3, "validFraction": 0.25}, dataset="given",
                              grouping=3)  # fmt: skip
    done = await client.wait(job["id"], timeout_s=240)
    lines = await logs_of(client, job["id"])
    assert done["status"] == "Succeeded", lines
    # Not 25 % of the 384 training rows that the made test split leaves: the given 120.
    assert any("validation split" in ln and "validation=120" in ln for ln in lines), lines
    assert any("data loaded" in ln and "train=384" in ln for ln in lines), lines
    assert done["result"]["val_acc_discrete"] is not None


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format: 0, 0, dtype 0x08 (ubyte), ndim, big-endian sizes, the bytes."""
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    raw = head + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def digits_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose class lights one of ten bands of rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 250
    return images.astype(np.uint8), labels.astype(np.uint8)


async def test_offline_mnist_from_idx_files(
    live_api: LiveApi,
    client: GateQueueClient,
    start_worker: Callable[..., Awaitable[Worker]],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mnist-files"
    folder.mkdir()
    x_train, y_train = digits_like(400, 0)
    x_test, y_test = digits_like(100, 1)
    write_idx(folder / "train-images-idx3-ubyte", x_train)
    write_idx(folder / "train-labels-idx1-ubyte", y_train)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x_test)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y_test)
    rc, out, err = await gatequeue(live_api.url, "data", "add", "mnist", "--from", str(folder))
    assert rc == 0, err
    assert "registered mnist@1" in out and "784 input bits, 400 train / 100 test" in out
    assert out.strip().endswith("an image of 28x28x1")
    rc, out, err = await gatequeue(live_api.url, "data", "show", "mnist")
    assert json.loads(out)["shape"]["image"] == {"height": 28, "width": 28, "channels": 1}

    # No network: any attempt to download MNIST would fail at once, and the data dir is empty.
    offline = {**os.environ, "GATEQUEUE_MNIST_URL": f"file://{tmp_path}/no-such-mirror/"}
    await start_worker(trainer_cmd=None, env=offline)
    job = await client.submit(**{**HP, "epochs": 15}, dataset="mnist", grouping=10)
    assert job["datasetRef"]["name"] == "mnist"
    done = await client.wait(job["id"], timeout_s=240)
    lines = await logs_of(client, job["id"])
    assert done["status"] == "Succeeded", lines
    assert done["latestMetrics"]["test_acc_discrete"] > 0.3, lines


async def test_data_commands_show_and_remove(live_api: LiveApi, tmp_path: Path) -> None:
    blobs_npz(tmp_path / "v1.npz")
    blobs_npz(tmp_path / "v2.npz", seed=1)
    for name in ("v1.npz", "v2.npz"):
        rc, _, err = await gatequeue(live_api.url, "data", "add", str(tmp_path / name),
                                     "--name", "blobs")  # fmt: skip
        assert rc == 0, err
    rc, out, err = await gatequeue(live_api.url, "data", "show", "blobs@1")
    assert rc == 0, err
    shown = json.loads(out)
    assert (shown["name"], shown["version"], shown["classes"]) == ("blobs", 1, 3)
    rc, out, _ = await gatequeue(live_api.url, "data", "ls")
    assert "blobs" in out and "built-in" in out and "digits" in out

    rc, _, err = await gatequeue(live_api.url, "data", "rm", "blobs")
    assert rc == 2 and "several versions (blobs@2, blobs@1)" in err
    rc, out, err = await gatequeue(live_api.url, "data", "rm", "blobs@1")
    assert rc == 0 and f"deleted blobs@1 ({shown['id']})" in out, err
    rc, _, err = await gatequeue(live_api.url, "data", "show", "blobs@1")
    assert rc == 2 and "no registered data set 'blobs@1'" in err

    rc, _, err = await gatequeue(live_api.url, "data", "add", "mnist", "--from", str(tmp_path))
    assert rc == 2 and "has no train-images-idx3-ubyte" in err

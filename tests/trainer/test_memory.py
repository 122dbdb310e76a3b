"""The memory estimate (trainer.memory): torch-free, consistent with the model and the data
sets, and within 30 % of the peak resident set that real `python -m trainer` runs reach on
the CPU. Run with `-s` to see the figures."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from trainer_helpers import run_without_torch

from trainer.data import load_dataset
from trainer.data.catalog import SHAPES
from trainer.memory import EVAL_BATCH, MemoryEstimate, estimate_memory, layer_widths
from trainer.model import layer_widths as model_layer_widths

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
TOLERANCE = 0.30


@dataclass(frozen=True)
class Size:
    """A run big enough that the process baseline is not everything, small enough to take
    seconds; `phase` is what should dominate it."""

    gates: int
    layers: int
    batch: int
    epochs: int
    backend: str
    phase: str

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {
            "gateOptimizer": "sparsemax_noise",
            "gates": self.gates,
            "networkLayers": self.layers,
            "batchSize": self.batch,
            "epochs": self.epochs,
        }

    def argv(self, out: Path) -> list[str]:
        hp = self.hyperparameters
        return [
            "--gate-optimizer", hp["gateOptimizer"], "--gates", str(self.gates),
            "--network-layers", str(self.layers), "--batch-size", str(self.batch),
            "--epochs", str(self.epochs), "--backend", self.backend, "--threads", "2",
            "--output-dir", str(out),
        ]  # fmt: skip


SIZES = {
    "cpp 12000x4 batch 256": Size(12000, 4, 256, 2, "cpp", "training step"),
    "cpp 32000x3 batch 512": Size(32000, 3, 512, 2, "cpp", "training step"),
    "torch 8000x4 batch 512": Size(8000, 4, 512, 2, "torch", "training step"),
    "cpp 64000x2 batch 64": Size(64000, 2, 64, 2, "cpp", "evaluation"),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Peak RSS (bytes) of each size's run, all at once: os.wait4 gives each child's own
    getrusage, where RUSAGE_CHILDREN would give the largest child of the whole session."""
    tmp = tmp_path_factory.mktemp("memory")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: dict[str, tuple[subprocess.Popen[bytes], IO[str]]] = {}
    for name, size in SIZES.items():
        log = open(tmp / f"{len(procs)}.log", "w")  # closed below
        procs[name] = (
            subprocess.Popen(
                [sys.executable, "-m", "trainer", *size.argv(tmp / str(len(procs)))],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    peaks = {}
    for name, (proc, output) in procs.items():
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        output.close()
        assert proc.returncode == 0, Path(output.name).read_text()[-2000:]
        peaks[name] = usage.ru_maxrss * 1024  # KiB on Linux
    return peaks


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SIZES))
def test_the_estimate_is_within_30_percent_of_the_measured_peak(
    name: str, measured: dict[str, int]
) -> None:
    size = SIZES[name]
    estimate = estimate_memory(size.hyperparameters, "cpu", backend=size.backend, threads=2)
    peak = measured[name]
    error = estimate.total_bytes / peak - 1
    print(
        f"\n{name}, {size.epochs} epoch(s): measured {peak / MiB:.0f} MiB, estimated "
        f"{estimate.total_bytes / MiB:.0f} MiB ({error:+.1%}); {estimate.describe()}"
    )
    assert estimate.phase == size.phase
    assert abs(error) <= TOLERANCE


def test_the_estimate_imports_neither_torch_nor_numpy() -> None:
    """The API validates and sizes jobs without either installed."""
    run_without_torch(
        "from trainer.memory import estimate_memory\n"
        "e = estimate_memory({'gates': 32000}, 'cuda')\n"
        "assert e.total_bytes > 0 and e.describe()\n"
    )


@pytest.mark.parametrize(
    ("gates", "layers", "grouping"), [(3332, 4, 10), (7, 1, 2), (100, 3, 10), (1001, 2, 7)]
)
def test_widths_are_the_models(gates: int, layers: int, grouping: int) -> None:
    assert layer_widths(gates, layers, grouping) == model_layer_widths(gates, layers, grouping)


def test_data_set_sizes_are_the_loaders() -> None:
    for name in ("digits", "breast_cancer"):
        data = load_dataset(name)
        shape = SHAPES[name]
        assert (shape.inputs, shape.train, shape.test) == (
            data.in_dim,
            len(data.y_train),
            len(data.y_test),
        )
    assert SHAPES["mnist"].inputs == 28 * 28 and SHAPES["cifar10"].inputs == 3 * 32 * 32 * 3


def total(estimate: MemoryEstimate) -> int:
    assert sum(estimate.breakdown.values()) == estimate.total_bytes
    return estimate.total_bytes


def test_the_breakdown_adds_up_and_grows_with_what_the_run_holds() -> None:
    base = {"gates": 32000, "networkLayers": 4, "batchSize": 128}
    for device in ("cpu", "cuda"):
        small = estimate_memory(base, device)
        assert total(estimate_memory({**base, "batchSize": 256}, device)) > total(small)
        assert total(estimate_memory({**base, "networkLayers": 8}, device)) > total(small)
        assert small.breakdown["parameters"] >= 4 * 32000 * 16 * 4
        assert small.breakdown["adam_state"] == 2 * small.breakdown["parameters"]
    cuda = estimate_memory(base, "cuda")
    assert "process" not in cuda.breakdown and cuda.breakdown["cuda_context"] >= 300 * MiB
    assert cuda.backend == "torch"  # auto on CUDA counts the larger backend
    assert estimate_memory(base, "cuda", backend="difflogic").total_bytes < cuda.total_bytes
    # 2048 test samples at once: evaluation outgrows a batch of 64 on mnist
    mnist = estimate_memory({**base, "dataset": "mnist", "batchSize": 64}, "cpu")
    assert mnist.phase == "evaluation" and EVAL_BATCH == 2048
    # cifar10's loader holds the raw batches and their encoding before the model exists
    cifar = estimate_memory({"gates": 100, "networkLayers": 1, "dataset": "cifar10"}, "cpu")
    assert cifar.phase == "data loading" and cifar.breakdown["data_loading"] > 1 << 30
    text = cuda.describe()
    assert text.startswith("about ") and "on cuda" in text and "activations" in text


@pytest.mark.parametrize(
    ("device", "backend"), [("gpu", "auto"), ("cpu", "difflogic"), ("cuda", "cpp"), ("cpu", "x")]
)
def test_impossible_devices_and_backends_are_refused(device: str, backend: str) -> None:
    with pytest.raises(ValueError):
        estimate_memory({}, device, backend=backend)

"""`build_circuit`: what the worker calls after a successful run, one call, one document.

The returned dict is the job document's `circuit` field, JSON-safe:

    gates          int   gates of the trained network (every layer's width, summed)
    gatesLive      int   gates left after optimization (dead, constant, wire, duplicate gone)
    depth          int   longest input-to-output path of the live circuit, in gates
    imagesPerS     float single-threaded throughput of the C library (inputs packed,
                         argmax taken), on the test inputs repeated to `bench_samples`
    verified       bool  disagreements == 0
    disagreements  int   test samples where the C library's class differs from the numpy
                         evaluator's, plus simulated samples where the Verilog module's
                         differs from either (only where iverilog is installed)
    gateHistogram  dict  {gate name: count} over the 16 ids, of the trained network
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trainer.circuit.bundle import compile_network, named_histogram
from trainer.circuit.graph import histogram
from trainer.circuit.measure import bench_inputs, images_per_s
from trainer.circuit.verify import verify
from trainer.data import load_dataset

__all__ = [
    "build_circuit",
    "build_run_circuit",
    "run_bench_samples",
    "run_verilog_samples",
]


def build_circuit(
    network_path: str | Path,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | Path = "data",
    dataset_file: str | Path | None = None,
    threads: int = 1,
    verilog_samples: int = 256,
    bench_samples: int = 1 << 16,
    test_data: tuple[np.ndarray, np.ndarray] | None = None,
    bench_time_s: float = 0.3,
) -> dict[str, Any]:
    """Compile into out_dir, verify on the test split, measure images/s; the job field.

    dataset defaults to the one the network names (`dataset_file`: a registered data set's
    encoded file, as `--dataset-file`); `test_data` (x, y), when given, is used
    instead of loading it (the trainer has it in memory). The Verilog simulation is bounded
    to the first `verilog_samples` test samples (event-driven simulation is the slow part);
    `threads` is for the verification runs, the speed is always measured on one thread,
    over `bench_time_s` seconds of calls of `bench_samples` samples.
    Raises OSError/ValueError (bad network), trainer.data.DataError (data missing),
    trainer.circuit.CircuitError (no C compiler, failed build), SimulationError (iverilog
    rejected the module).
    """
    compiled = compile_network(network_path, out_dir)
    in_dim = compiled.network.in_dim
    if test_data is None:
        name = dataset or compiled.network.meta.get("dataset", {}).get("name")
        if not name:
            raise ValueError("the network names no dataset; pass dataset=")
        data = load_dataset(name, data_dir, dataset_file)
        if data.in_dim != in_dim:
            raise ValueError(f"{name} has {data.in_dim} inputs, the network reads {in_dim}")
        x_test, y_test = data.x_test, data.y_test
    else:
        x_test, y_test = test_data
        if x_test.ndim != 2 or x_test.shape[1] != in_dim:
            raise ValueError(f"test inputs are {x_test.shape}, the network reads {in_dim}")
    check = verify(compiled, x_test, y_test, verilog_samples=verilog_samples, threads=threads)
    x = bench_inputs(in_dim, bench_samples, x_test)
    speed = images_per_s(compiled.library, x, threads=1, min_time_s=bench_time_s)
    return {
        "gates": int(compiled.trained.gates),
        "gatesLive": int(compiled.live.gates),
        "depth": int(compiled.manifest["depth"]),
        "imagesPerS": round(float(speed), 1),
        "verified": bool(check.verified),
        "disagreements": int(check.disagreements),
        "gateHistogram": named_histogram(histogram(compiled.trained)),
    }


RUN_FILES: tuple[str, ...] = ("network.c", "network.h", "network.v")
RUN_BENCH_BYTES = 16 << 20  # input bytes per timed call in a run: 16 MiB, out of cache
RUN_BENCH_SAMPLES = (2048, 1 << 16)  # ... and between these many samples
# iverilog elaborates a module in about 50 us per gate and then simulates about 2 us per
# gate and sample (6 x 16,000 random gates, 23,403 live: 4.7 s + 50 ms a sample): a run
# simulates 256 samples up to 20,000 trained gates and fewer above, 32 at least.
RUN_VERILOG_GATE_SAMPLES = 5_000_000
RUN_VERILOG_SAMPLES = (32, 256)


def run_bench_samples(in_dim: int) -> int:
    """Samples per timed call of a run's measurement: 16 MiB of inputs, within bounds."""
    low, high = RUN_BENCH_SAMPLES
    return max(low, min(high, RUN_BENCH_BYTES // max(1, in_dim)))


def run_verilog_samples(gates: int) -> int:
    """Test samples a run simulates in Verilog, for a network of `gates` trained gates."""
    low, high = RUN_VERILOG_SAMPLES
    return max(low, min(high, RUN_VERILOG_GATE_SAMPLES // max(1, gates)))


def build_run_circuit(
    network_path: Path,
    output_dir: Path,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    gates: int,
) -> dict[str, Any]:
    """What `python -m trainer` does after saving network.json: build_circuit in a
    temporary folder, then network.c, network.h and network.v beside network.json.

    The library and the manifest stay out of output_dir: the worker uploads everything
    there as the job's artifacts, and a .so is only good on the machine that built it.
    `gates` (trained, all layers) bounds the Verilog simulation (run_verilog_samples).
    Raises what build_circuit raises.
    """
    with tempfile.TemporaryDirectory(prefix="gatequeue-circuit-") as tmp:
        result = build_circuit(
            network_path,
            Path(tmp),
            test_data=(x_test, y_test),
            verilog_samples=run_verilog_samples(gates),
            bench_samples=run_bench_samples(x_test.shape[1]),
        )
        for name in RUN_FILES:
            _copy_atomically(Path(tmp) / name, output_dir / name)
    return result


def _copy_atomically(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

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

from pathlib import Path
from typing import Any

from trainer.circuit.bundle import compile_network, named_histogram
from trainer.circuit.graph import histogram
from trainer.circuit.measure import bench_inputs, images_per_s
from trainer.circuit.verify import verify
from trainer.data import load_dataset

RESULT_KEYS: tuple[str, ...] = (
    "gates",
    "gatesLive",
    "depth",
    "imagesPerS",
    "verified",
    "disagreements",
    "gateHistogram",
)


def build_circuit(
    network_path: str | Path,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | Path = "data",
    threads: int = 1,
    verilog_samples: int = 256,
    bench_samples: int = 1 << 16,
) -> dict[str, Any]:
    """Compile into out_dir, verify on the test split, measure images/s; the job field.

    dataset defaults to the one the network names. The Verilog simulation is bounded to
    the first `verilog_samples` test samples (event-driven simulation is the slow part);
    `threads` is for the verification runs, the speed is always measured on one thread.
    Raises OSError/ValueError (bad network), trainer.data.DataError (data missing),
    trainer.circuit.CircuitError (no C compiler, failed build), SimulationError (iverilog
    rejected the module).
    """
    compiled = compile_network(network_path, out_dir)
    name = dataset or compiled.network.meta.get("dataset", {}).get("name")
    if not name:
        raise ValueError("the network names no dataset; pass dataset=")
    data = load_dataset(name, data_dir)
    if data.in_dim != compiled.network.in_dim:
        raise ValueError(
            f"{name} has {data.in_dim} inputs, the network reads {compiled.network.in_dim}"
        )
    check = verify(
        compiled, data.x_test, data.y_test, verilog_samples=verilog_samples, threads=threads
    )
    x = bench_inputs(data.in_dim, bench_samples, data.x_test)
    return {
        "gates": int(compiled.trained.gates),
        "gatesLive": int(compiled.live.gates),
        "depth": int(compiled.manifest["depth"]),
        "imagesPerS": round(float(images_per_s(compiled.library, x, threads=1)), 1),
        "verified": bool(check.verified),
        "disagreements": int(check.disagreements),
        "gateHistogram": named_histogram(histogram(compiled.trained)),
    }

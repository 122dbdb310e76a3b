"""A trained convolutional digits network through the circuit: the run builds and verifies
its circuit as a dense run does, the C library agrees with the numpy evaluator on every test
sample, the Verilog simulation on 256, and both with the trainer's discrete accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.circuit import compile_network
from trainer.circuit.verilog import simulate, simulator
from trainer.data import load_dataset
from trainer.export import load_network

ROOT = Path(__file__).resolve().parents[2]
needs_iverilog = pytest.mark.skipif(
    simulator() is None, reason="iverilog/vvp not installed (apt-get install iverilog)"
)


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small conv network (padding, 2x2 and OR pooling) trained by the real CLI."""
    out = tmp_path_factory.mktemp("conv-run")
    proc = subprocess.run(
        [
            sys.executable, "-m", "trainer", "--dataset", "digits", "--gate-optimizer",
            "softmax", "--architecture", "conv", "--conv-channels", "8,16", "--gates", "400",
            "--network-layers", "2", "--residual-layers", "1", "--group-sum-tau", "10",
            "--learning-rate", "0.05", "--epochs", "3", "--output-dir", str(out),
            "--device", "cpu",
        ],
        check=True, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return out / "network.json", proc.stdout


def line(stdout: str, tag: str) -> str:
    return next(ln for ln in stdout.splitlines() if ln.startswith(tag + " "))


def test_the_run_verifies_its_circuit(conv_run: tuple[Path, str]) -> None:
    path, stdout = conv_run
    circuit = json.loads(line(stdout, "CIRCUIT").split(" ", 1)[1])
    assert circuit["verified"] is True and circuit["disagreements"] == 0
    doc = json.loads(path.read_text())
    assert doc["architecture"]["type"] == "conv"
    assert circuit["gates"] == sum(layer["gates"] for layer in doc["layers"])
    assert 0 < circuit["gatesLive"] < circuit["gates"]
    summary = dict(p.split("=", 1) for p in line(stdout, "SUMMARY").split()[1:])
    data = load_dataset("digits")
    numpy_acc = (load_network(path).predict(data.x_test) == data.y_test).mean()
    assert float(summary["test_acc_discrete"]) == pytest.approx(numpy_acc, abs=1e-4)


def test_verify_agrees_on_every_test_sample(conv_run: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = conv_run
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.circuit", "verify", str(path), "--verilog-samples", "256"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "GATEQUEUE_CIRCUIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = dict(p.split("=", 1) for p in proc.stdout.split() if "=" in p)
    assert out["c_vs_numpy"] == "360/360" and out["verified"] == "true"
    if simulator() is not None:
        assert out["verilog_vs_c"] == "256/256" and out["verilog_vs_numpy"] == "256/256"


@needs_iverilog
def test_verilog_agrees_with_the_numpy_evaluator(
    conv_run: tuple[Path, str], tmp_path: Path
) -> None:
    path, _ = conv_run
    compiled = compile_network(path, tmp_path / "c")
    x = load_dataset("digits").x_test[:256]
    predictions, scores = simulate(compiled.live, compiled.module_path, x)
    network = load_network(path)
    assert np.array_equal(predictions, network.predict(x))
    assert np.array_equal(scores, network.scores(x))
    assert np.array_equal(compiled.library.predict(load_dataset("digits").x_test),
                          network.predict(load_dataset("digits").x_test))  # fmt: skip


def test_a_conv_run_resumed_from_a_checkpoint_repeats_the_run(tmp_path: Path) -> None:
    """A conv run resumed after its second epoch prints the same metrics and saves the same
    network as the run that never stopped (gumbel noise and data order in play): the tree
    levels' logits and their optimizer state resume exactly, as the dense layers' do."""
    run = [
        sys.executable, "-m", "trainer", "--gate-optimizer", "gumbel_softmax",
        "--noise-temp", "1.0", "--architecture", "conv", "--conv-channels", "4,8",
        "--gates", "200", "--network-layers", "1", "--group-sum-tau", "10",
        "--learning-rate", "0.05", "--epochs", "3", "--seed", "3", "--no-circuit",
        "--checkpoint-interval-s", "0",
    ]  # fmt: skip

    def train(name: str, *more: str) -> tuple[list[str], list[object]]:
        proc = subprocess.run(
            [*run, "--output-dir", str(tmp_path / name), "--checkpoint-dir",
             str(tmp_path / f"{name}-ck"), *more],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        epochs = [
            " ".join(p for p in ln.split() if p.split("=")[0] not in ("epoch_s", "step_ms"))
            for ln in proc.stdout.splitlines()
            if ln.startswith("EPOCH ")
        ]
        return epochs, json.loads((tmp_path / name / "network.json").read_text())["layers"]

    full_epochs, full_layers = train("full")
    first = tmp_path / "full-ck" / "checkpoint-e000002-s00000000.gqckpt"
    resumed_epochs, resumed_layers = train("resumed", "--resume-from", str(first))
    assert resumed_epochs == full_epochs[2:]
    assert resumed_layers == full_layers

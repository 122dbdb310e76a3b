"""A trained digits network end to end: the CLI, build_circuit, and the Verilog module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trainer.circuit import build_circuit, compile_network
from trainer.circuit.ops import GATE_NAMES
from trainer.circuit.synthetic import random_network
from trainer.circuit.verilog import simulate, simulator
from trainer.data import load_dataset
from trainer.export import load_network, save_network
from trainer.protocol import CIRCUIT_KEYS as RESULT_KEYS

ROOT = Path(__file__).resolve().parents[2]
needs_iverilog = pytest.mark.skipif(
    simulator() is None, reason="iverilog/vvp not installed (apt-get install iverilog)"
)


@pytest.fixture(scope="session")
def digits_network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """network.json of a small digits network, trained for three epochs by the real CLI."""
    out = tmp_path_factory.mktemp("digits-run")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--dataset",
            "digits",
            "--gate-optimizer",
            "softmax",
            "--gates",
            "500",
            "--network-layers",
            "2",
            "--epochs",
            "3",
            "--residual-layers",
            "0",
            "--group-sum-tau",
            "10",
            "--output-dir",
            str(out),
            "--device",
            "cpu",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=600,
    )
    return out / "network.json"


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {**os.environ, "GATEQUEUE_CIRCUIT_CACHE": str(tmp_path / "cache")}


def circuit_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer.circuit", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def test_compile_prints_sizes_and_writes_the_files(
    digits_network: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    proc = circuit_cli(["compile", str(digits_network), "-o", str(tmp_path / "c")], cli_env)
    assert proc.returncode == 0, proc.stderr
    first = fields(proc.stdout.splitlines()[0])
    assert first["gates"] == "1000"
    assert 0 < int(first["gates_live"]) < 1000
    assert first["depth"] == "2"
    for name in ("network.c", "network.h", "network.v", "network.json", "circuit.json"):
        assert (tmp_path / "c" / name).stat().st_size > 0
    assert list((tmp_path / "c").glob("network.*.so"))
    sizes = [fields(ln) for ln in proc.stdout.splitlines() if ln.startswith("file ")]
    assert {"network.c", "network.v"} <= {
        ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("file ")
    }
    assert all(int(s["bytes"]) > 0 for s in sizes)


def test_predict_equals_the_numpy_evaluator_for_every_test_sample(
    digits_network: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    data = load_dataset("digits")
    np.save(tmp_path / "x.npy", data.x_test.astype(bool))
    expected = load_network(digits_network).predict(data.x_test)
    compiled = tmp_path / "c"
    assert (
        circuit_cli(["compile", str(digits_network), "-o", str(compiled)], cli_env).returncode == 0
    )
    for target in (str(digits_network), str(compiled)):  # a network.json goes via the cache
        proc = circuit_cli(
            [
                "predict",
                target,
                "--inputs",
                str(tmp_path / "x.npy"),
                "--out",
                str(tmp_path / "y.npy"),
                "--threads",
                "2",
            ],
            cli_env,
        )
        assert proc.returncode == 0, proc.stderr
        assert np.array_equal(np.load(tmp_path / "y.npy"), expected)
    assert list((tmp_path / "cache").iterdir())


def test_verify_exits_0_and_reports_each_pair(
    digits_network: Path, cli_env: dict[str, str]
) -> None:
    proc = circuit_cli(["verify", str(digits_network), "--verilog-samples", "100"], cli_env)
    assert proc.returncode == 0, proc.stderr
    out = fields(proc.stdout)
    assert out["c_vs_numpy"] == "360/360"
    assert out["disagreements"] == "0" and out["verified"] == "true"
    accuracy = float(out["accuracy"])
    expected = (
        load_network(digits_network).predict(load_dataset("digits").x_test)
        == load_dataset("digits").y_test
    ).mean()
    assert accuracy == pytest.approx(expected, abs=1e-4)
    if simulator() is not None:
        assert out["verilog_vs_c"] == "100/100" and out["verilog_vs_numpy"] == "100/100"


def test_verify_exits_1_when_the_circuit_is_wrong(
    digits_network: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    compiled = tmp_path / "c"
    assert (
        circuit_cli(["compile", str(digits_network), "-o", str(compiled)], cli_env).returncode == 0
    )
    source = compiled / "network.c"
    text = source.read_text()
    start = text.index("static const uint32_t GATE_A[")
    body = text.index("{", start) + 1
    end = text.index("}", body)
    entries = text[body:end].split(",")
    entries = entries[1:] + entries[:1]  # every gate now reads someone else's first input
    source.write_text(text[:body] + ",".join(entries) + text[end:])
    proc = circuit_cli(["verify", str(compiled), "--verilog-samples", "0"], cli_env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert int(fields(proc.stdout)["disagreements"]) > 0


def test_missing_and_invalid_files_exit_2(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    for command in ("verify", "bench", "predict"):
        extra = ["--inputs", "x.npy", "--out", "y.npy"] if command == "predict" else []
        for target in ("missing.json", "bad.json", "other.json"):
            proc = circuit_cli([command, str(tmp_path / target), *extra], cli_env)
            assert proc.returncode == 2, (command, target, proc.stderr)
            assert proc.stderr.startswith("error: ")
    proc = circuit_cli(
        ["compile", str(tmp_path / "missing.json"), "-o", str(tmp_path / "c")], cli_env
    )
    assert proc.returncode == 2 and "missing.json" in proc.stderr


def test_bench_prints_the_figures(digits_network: Path, cli_env: dict[str, str]) -> None:
    proc = circuit_cli(
        ["bench", str(digits_network), "--samples", "5000", "--threads", "2"], cli_env
    )
    assert proc.returncode == 0, proc.stderr
    out = fields(proc.stdout)
    assert float(out["images_per_s"]) > 0
    assert out["gates"] == "1000" and out["threads"] == "2" and out["depth"] == "2"
    assert int(out["gates_live"]) < 1000


def test_build_circuit_returns_the_job_document_field(digits_network: Path, tmp_path: Path) -> None:
    result = build_circuit(digits_network, tmp_path / "circuit")
    assert tuple(result) == RESULT_KEYS
    assert json.loads(json.dumps(result)) == result
    assert result["gates"] == 1000
    assert 0 < result["gatesLive"] < result["gates"]
    assert result["depth"] == 2
    assert result["verified"] is True and result["disagreements"] == 0
    assert result["imagesPerS"] > 0
    histogram = result["gateHistogram"]
    assert len(histogram) == 16 and sum(histogram.values()) == 1000
    trained_ops = np.concatenate([layer.op for layer in load_network(digits_network).layers])
    counts = np.bincount(trained_ops, minlength=16).tolist()
    assert histogram == dict(zip(GATE_NAMES, counts, strict=True))
    assert (tmp_path / "circuit" / "network.v").exists()


@needs_iverilog
def test_verilog_of_the_trained_network_agrees_with_the_c_library(
    digits_network: Path, tmp_path: Path
) -> None:
    compiled = compile_network(digits_network, tmp_path / "c")
    x = load_dataset("digits").x_test[:256]
    predictions, scores = simulate(compiled.live, compiled.module_path, x)
    assert np.array_equal(predictions, compiled.library.predict(x))
    assert np.array_equal(scores, compiled.library.scores(x))


@needs_iverilog
@pytest.mark.parametrize(
    ("in_dim", "widths", "grouping"), [(7, [16, 10], 2), (50, [120, 120, 120], 10)]
)
def test_verilog_of_random_networks_agrees_with_the_c_library(
    tmp_path: Path, in_dim: int, widths: list[int], grouping: int
) -> None:
    path = save_network(random_network(in_dim, widths, grouping, seed=in_dim), tmp_path / "n")
    compiled = compile_network(path, tmp_path / "c")
    x = np.random.default_rng(0).integers(0, 2, (256, in_dim), dtype=np.uint8)
    predictions, scores = simulate(compiled.live, compiled.module_path, x)
    assert np.array_equal(predictions, compiled.library.predict(x))
    assert np.array_equal(scores, compiled.library.scores(x))

"""Every successful run compiles, verifies and times its circuit (docs/trainer.md, "The
circuit"): the CIRCUIT line, network.c/.h/.v beside network.json, the SUMMARY's
discretization_gap and live_fraction; a run without a C compiler or with --no-circuit
still succeeds. And the CIRCUIT line's parser (trainer/protocol.py), which the worker shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trainer import protocol
from trainer.circuit import bundle
from trainer.circuit.api import run_bench_samples, run_verilog_samples
from trainer.circuit.ops import GATE_NAMES
from trainer.cli import main

ROOT = Path(__file__).resolve().parents[2]
RUN = [
    "--dataset", "digits", "--gate-optimizer", "softmax", "--gates", "300",
    "--network-layers", "2", "--epochs", "2", "--residual-layers", "0",
    "--group-sum-tau", "10", "--learning-rate", "0.05", "--device", "cpu",
]  # fmt: skip
SOURCES = ("network.c", "network.h", "network.v")
CIRCUIT_PREFIX = protocol.Circuit.PREFIX
RESULT_KEYS = protocol.CIRCUIT_KEYS


def format_circuit_line(result: dict[str, Any]) -> str:
    return protocol.Circuit(result).format()


def parse_circuit_line(line: str) -> dict[str, Any] | None:
    record = protocol.Circuit.parse(line)
    return None if record is None else record.result


@dataclass
class Done:
    rc: int
    out: str
    err: str
    output_dir: Path

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.out.splitlines() if line.startswith(prefix)]

    def summary(self) -> dict[str, str]:
        last = self.out.rstrip().splitlines()[-1]
        assert last.startswith("SUMMARY "), last
        return dict(part.split("=", 1) for part in last.split()[1:])

    def last_epoch(self) -> dict[str, float]:
        return self.epoch(len(self.lines("EPOCH ")))

    def epoch(self, number: int) -> dict[str, float]:
        line = self.lines("EPOCH ")[number - 1]
        return {k: float(v) for k, v in (p.split("=") for p in line.split()[2:])}


def start(out: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    out.mkdir(parents=True)
    # Files, not pipes (a full pipe nobody reads yet would stall the process); the child
    # keeps its own copies of the descriptors.
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "trainer", *RUN, *args, "--output-dir", str(out / "run")],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )


def finish(proc: subprocess.Popen[str], out: Path) -> Done:
    proc.wait(timeout=300)
    text = [(out / name).read_text() for name in ("stdout.txt", "stderr.txt")]
    return Done(proc.returncode, text[0], text[1], out / "run")


@dataclass
class Runs:
    plain: Done
    no_circuit: Done
    cc_missing: Done  # $CC names no compiler
    path_empty: Done  # no cc, gcc or clang on PATH


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Four runs at once, to spend seconds, not tens of them."""
    tmp = tmp_path_factory.mktemp("circuit-run")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CC", None)
    empty = tmp / "empty-bin"
    empty.mkdir()
    procs = [
        (start(tmp / "plain", [], env), tmp / "plain"),
        (start(tmp / "no-circuit", ["--no-circuit"], env), tmp / "no-circuit"),
        (start(tmp / "cc", [], {**env, "CC": "no-such-cc-here"}), tmp / "cc"),
        # the C++ layer kernel needs g++ as well: the torch backend needs no compiler
        (start(tmp / "path", ["--backend", "torch"], {**env, "PATH": str(empty)}), tmp / "path"),
    ]
    yield Runs(*(finish(proc, out) for proc, out in procs))


def test_a_run_prints_a_verified_circuit_line_and_keeps_its_sources(runs: Runs) -> None:
    done = runs.plain
    assert done.rc == 0, done.err
    [line] = done.lines(CIRCUIT_PREFIX)
    result = parse_circuit_line(line)
    assert result is not None, line
    assert tuple(result) == RESULT_KEYS
    assert result["gates"] == 600 and 0 < result["gatesLive"] <= 600
    assert result["verified"] is True and result["disagreements"] == 0
    assert result["depth"] == 2 and result["imagesPerS"] > 0
    assert sum(result["gateHistogram"].values()) == 600
    lines = done.out.rstrip().splitlines()
    assert lines.index(line) < len(lines) - 1 and lines[-1].startswith("SUMMARY ")
    # beside network.json: the three sources, and nothing else (no library, no manifest)
    names = sorted(p.name for p in done.output_dir.iterdir())
    assert names == sorted(["network.json", *SOURCES])
    for name in SOURCES:
        assert (done.output_dir / name).stat().st_size > 0
    assert "gatequeue circuit" not in done.err and "not built" not in done.err
    # the circuit's own timing is not in network.json (resumed runs compare it byte for byte)
    assert b"imagesPerS" not in (done.output_dir / "network.json").read_bytes()


def test_the_summary_has_the_discretization_gap_and_the_live_fraction(runs: Runs) -> None:
    done = runs.plain
    summary = done.summary()
    epoch = done.epoch(int(summary["kept_epoch"]))  # the kept network's numbers
    gap = epoch["test_acc"] - epoch["test_acc_discrete"]
    assert float(summary["discretization_gap"]) == pytest.approx(gap, abs=2e-4)
    result = parse_circuit_line(done.lines(CIRCUIT_PREFIX)[0])
    assert result is not None
    assert float(summary["live_fraction"]) == pytest.approx(
        result["gatesLive"] / result["gates"], abs=1e-4
    )
    assert list(summary)[:6] == [
        "epochs",
        "kept_epoch",
        "val_acc_discrete",
        "test_acc_discrete",
        "test_acc",
        "discretization_gap",
    ]


def test_no_circuit_skips_it(runs: Runs) -> None:
    done = runs.no_circuit
    assert done.rc == 0, done.err
    assert done.lines(CIRCUIT_PREFIX) == []
    assert sorted(p.name for p in done.output_dir.iterdir()) == ["network.json"]
    summary = done.summary()
    assert "discretization_gap" in summary and "live_fraction" not in summary
    assert "circuit" not in done.err


@pytest.mark.parametrize("which", ["cc_missing", "path_empty"])
def test_without_a_c_compiler_the_run_succeeds_and_says_why(runs: Runs, which: str) -> None:
    done: Done = getattr(runs, which)
    assert done.rc == 0, done.err
    assert done.lines(CIRCUIT_PREFIX) == []
    reasons = [ln for ln in done.err.splitlines() if ln.startswith("gatequeue: circuit not built")]
    assert len(reasons) == 1, done.err
    assert "no C compiler found" in reasons[0]
    assert ("no-such-cc-here" if which == "cc_missing" else "cc, gcc, clang") in reasons[0]
    assert sorted(p.name for p in done.output_dir.iterdir()) == ["network.json"]
    summary = done.summary()
    assert "discretization_gap" in summary and "live_fraction" not in summary


def test_a_disagreeing_circuit_is_reported_and_the_run_still_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong C library (every gate reads the next one's first input): verified false with
    the count, exit 0."""
    real = bundle.c_backend.source

    def wrong(*args: Any, **kwargs: Any) -> str:
        text = real(*args, **kwargs)
        start = text.index("static const uint32_t GATE_A[")
        body = text.index("{", start) + 1
        end = text.index("}", body)
        entries = text[body:end].split(",")
        return text[:body] + ",".join(entries[1:] + entries[:1]) + text[end:]

    monkeypatch.setattr(bundle.c_backend, "source", wrong)
    out = tmp_path / "run"
    code = main([*RUN, "--gates", "200", "--epochs", "1", "--output-dir", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    [line] = [ln for ln in stdout.splitlines() if ln.startswith(CIRCUIT_PREFIX)]
    result = parse_circuit_line(line)
    assert result is not None
    assert result["verified"] is False and result["disagreements"] > 0
    assert "the compiled circuit disagrees with the saved network" in stdout
    assert stdout.rstrip().splitlines()[-1].startswith("SUMMARY ")


def example() -> dict[str, Any]:
    histogram = dict.fromkeys(GATE_NAMES, 0)
    histogram["A AND B"], histogram["A XOR B"] = 600, 400
    return {
        "gates": 1000,
        "gatesLive": 544,
        "depth": 2,
        "imagesPerS": 15234567.8,
        "verified": True,
        "disagreements": 0,
        "gateHistogram": histogram,
    }


def test_the_line_round_trips() -> None:
    line = format_circuit_line(example())
    assert line.startswith("CIRCUIT {") and "\n" not in line
    assert parse_circuit_line(line) == example()
    assert parse_circuit_line(line + "\n") == example()
    assert list(parse_circuit_line(line) or {}) == list(RESULT_KEYS)
    unverified = {**example(), "verified": False, "disagreements": 3}
    assert parse_circuit_line(format_circuit_line(unverified)) == unverified


def _with(**changes: Any) -> dict[str, Any]:
    return {**example(), **changes}


def _line(value: Any) -> str:
    return CIRCUIT_PREFIX + json.dumps(value)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "CIRCUIT",
        "CIRCUIT ",
        "CIRCUIT {",
        "CIRCUIT []",
        "CIRCUIT null",
        'CIRCUIT {"gates": 1}',
        "circuit " + json.dumps(example()),
        "SUMMARY epochs=3 test_acc=0.5",
        " " + _line(example()),
        _line(example()).replace("15234567.8", "NaN"),
        _line(example()).replace("15234567.8", "Infinity"),
        _line(example()) + " trailing",
        _line({**example(), "extra": 1}),
        _line({k: v for k, v in example().items() if k != "depth"}),
        _line(dict(reversed(list(example().items())))),
        _line(_with(gates=-1)),
        _line(_with(gates=1000.0)),
        _line(_with(gates=True)),
        _line(_with(gatesLive=1001)),
        _line(_with(depth="2")),
        _line(_with(imagesPerS=-1.0)),
        _line(_with(imagesPerS=None)),
        _line(_with(imagesPerS=True)),
        _line(_with(verified="true")),
        _line(_with(verified=False)),
        _line(_with(disagreements=2)),
        _line(_with(gateHistogram={"AND": 1000})),
        _line(_with(gateHistogram=[1000] + [0] * 15)),
        _line(_with(gateHistogram={**example()["gateHistogram"], "A AND B": -600})),
        _line(_with(gateHistogram={**example()["gateHistogram"], "A AND B": 1})),
    ],
)
def test_the_parser_rejects_anything_else(line: str) -> None:
    assert parse_circuit_line(line) is None


def test_format_refuses_an_invalid_result() -> None:
    with pytest.raises(ValueError, match="imagesPerS"):
        format_circuit_line(_with(imagesPerS=float("nan")))
    with pytest.raises(ValueError, match="keys"):
        format_circuit_line({k: v for k, v in example().items() if k != "gates"})


def test_the_measurement_and_the_simulation_are_bounded() -> None:
    assert run_bench_samples(256) == 65536  # digits: 16 MiB of inputs
    assert run_bench_samples(784) == 21399
    assert run_bench_samples(9216) == 2048  # cifar10: the floor
    assert run_verilog_samples(600) == 256
    assert run_verilog_samples(96_000) == 52
    assert run_verilog_samples(10**7) == 32

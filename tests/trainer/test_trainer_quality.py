"""Training works: every parametrization learns digits above chance, and the documented
configuration reaches 90 % discrete test accuracy. Accuracy only, no timings (bench/)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from trainer.cli import build_parser, validate
from trainer.loop import run
from trainer.parametrizations import GATE_OPTIMIZERS

CHANCE = 0.1  # digits: ten balanced classes


def train(tmp_path: Path, *argv: str) -> dict[str, float]:
    parser = build_parser()
    args: argparse.Namespace = parser.parse_args([*argv, "--output-dir", str(tmp_path)])
    validate(parser, args)
    return run(args)


@pytest.mark.parametrize("name", GATE_OPTIMIZERS)
def test_every_parametrization_learns_digits(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = train(
        tmp_path,
        "--gate-optimizer",
        name,
        "--gates",
        "300",
        "--network-layers",
        "2",
        "--group-sum-tau",
        "10",
        "--epochs",
        "8",
        "--batch-size",
        "64",
        "--learning-rate",
        "0.05",
        "--residual-layers",
        "0",
        "--noise-temp",
        "1.0",
    )
    assert metrics["test_acc_discrete"] > 3 * CHANCE, metrics
    assert metrics["test_acc"] > 3 * CHANCE, metrics


def test_residual_initialised_network_learns(tmp_path: Path) -> None:
    metrics = train(
        tmp_path,
        "--gate-optimizer",
        "softmax",
        "--gates",
        "300",
        "--network-layers",
        "3",
        "--group-sum-tau",
        "10",
        "--epochs",
        "8",
        "--batch-size",
        "64",
        "--learning-rate",
        "0.05",
        "--residual-layers",
        "3",
    )
    assert metrics["test_acc_discrete"] > 3 * CHANCE, metrics


def test_documented_digits_configuration_reaches_90_percent(tmp_path: Path) -> None:
    """docs/trainer.md: 2 layers x 1000 gates, softmax, tau 6, 40 epochs (seconds on CPU)."""
    metrics = train(
        tmp_path,
        "--gate-optimizer",
        "softmax",
        "--gates",
        "1000",
        "--network-layers",
        "2",
        "--group-sum-tau",
        "6",
        "--epochs",
        "40",
        "--batch-size",
        "64",
        "--learning-rate",
        "0.05",
        "--residual-layers",
        "0",
    )
    assert metrics["test_acc_discrete"] >= 0.9, metrics

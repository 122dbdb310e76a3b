"""The validation split and the kept network (docs/trainer.md, "Validation and the kept
network"): the split is stratified, disjoint from what is trained on and tested on, and
fixed by the seed; with `--keep best` the saved network is the epoch with the highest
`val_acc_discrete`, which `python -m trainer.evaluate` confirms independently."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer import protocol
from trainer.cli import build_parser, validate
from trainer.data import load_dataset
from trainer.data.split import validation_split
from trainer.loop import run

ROOT = Path(__file__).resolve().parents[2]
# Five epochs of this small network: validation accuracy peaks at epoch 4 (0.6408, then
# 0.6268), so `keep: best` saves another network than the last epoch's (the soft estimator:
# the trajectory these numbers were measured on).
PEAKS_EARLY = [
    "--gate-optimizer", "softmax", "--gates", "200", "--network-layers", "2",
    "--group-sum-tau", "10", "--learning-rate", "0.05", "--epochs", "5", "--no-circuit",
    "--threads", "1", "--gate-estimator", "soft",
]  # fmt: skip


def test_the_split_is_stratified_disjoint_and_fixed_by_the_seed() -> None:
    data = load_dataset("digits", ROOT / "data")
    y = data.y_train
    train, valid = validation_split(y, 0.1, seed=7)
    assert len(np.intersect1d(train, valid)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, valid])), np.arange(len(y)))
    for label in np.unique(y):
        members = int((y == label).sum())
        assert int((y[valid] == label).sum()) == round(0.1 * members)
    again_train, again_valid = validation_split(y, 0.1, seed=7)
    assert np.array_equal(valid, again_valid) and np.array_equal(train, again_train)
    other = validation_split(y, 0.1, seed=8)[1]
    assert not np.array_equal(valid, other) and len(other) == len(valid)
    # The test split is another array altogether: no validation row is one of its rows
    # unless the same pixels occur in both splits of the raw data.
    test_rows = {row.tobytes() for row in data.x_test}
    raw_overlap = sum(row.tobytes() in test_rows for row in data.x_train)
    assert sum(data.x_train[i].tobytes() in test_rows for i in valid) <= raw_overlap
    assert validation_split(y, 0.0, seed=7)[1].size == 0
    with pytest.raises(ValueError):
        validation_split(y, 0.6, seed=7)


def _train(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    parser = build_parser()
    args: argparse.Namespace = parser.parse_args([*argv, "--output-dir", str(tmp_path)])
    validate(parser, args)
    capsys.readouterr()
    run(args)
    return capsys.readouterr().out.splitlines()


def _records(lines: list[str]) -> tuple[list[protocol.Epoch], protocol.Summary]:
    records = [protocol.parse_line(line) for line in lines]
    epochs = [r for r in records if isinstance(r, protocol.Epoch)]
    summaries = [r for r in records if isinstance(r, protocol.Summary)]
    assert len(summaries) == 1
    return epochs, summaries[0]


def _evaluate(network: Path) -> float:
    """`python -m trainer.evaluate` in its own process: numpy truth tables, no torch."""
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", str(network), "--data-dir", str(ROOT / "data")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    values = protocol.parse_pairs(proc.stdout)
    return float(values["test_acc_discrete"])


def test_keep_best_saves_the_epoch_with_the_best_validation_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    epochs, summary = _records(_train(tmp_path / "best", capsys, *PEAKS_EARLY))
    assert all({"val_acc", "val_acc_discrete"} <= set(e.metrics) for e in epochs)
    best = max(epochs, key=lambda e: (e.metrics["val_acc_discrete"], -e.epoch))
    last = epochs[-1]
    assert best.epoch < last.epoch, "the configuration no longer peaks early"
    result = summary.result
    assert result is not None
    assert result.epoch == best.epoch
    assert result.val_acc_discrete == best.metrics["val_acc_discrete"]
    assert result.test_acc_discrete == best.metrics["test_acc_discrete"]
    assert result.test_acc == best.metrics["test_acc"]
    evaluated = _evaluate(summary.network)
    assert round(evaluated, 4) == result.test_acc_discrete
    assert round(evaluated, 4) != last.metrics["test_acc_discrete"]

    # The same run with keep: last saves the last epoch's network.
    lines = _train(tmp_path / "last", capsys, *PEAKS_EARLY, "--keep", "last")
    epochs_l, summary_l = _records(lines)
    assert [e.metrics["val_acc_discrete"] for e in epochs_l] == [
        e.metrics["val_acc_discrete"] for e in epochs
    ]
    assert summary_l.result is not None and summary_l.result.epoch == last.epoch
    assert round(_evaluate(summary_l.network), 4) == last.metrics["test_acc_discrete"]


def test_without_a_validation_split_the_last_epoch_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    epochs, summary = _records(_train(tmp_path, capsys, *PEAKS_EARLY, "--valid-fraction", "0"))
    assert not any("val_acc" in e.metrics or "val_acc_discrete" in e.metrics for e in epochs)
    assert summary.result is not None
    assert summary.result.epoch == epochs[-1].epoch and summary.result.val_acc_discrete is None
    assert summary.result.test_acc_discrete == epochs[-1].metrics["test_acc_discrete"]


def test_the_kept_network_survives_a_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checkpoints after epoch 4 (the kept one: its network is the model itself) and after
    epoch 5 (the kept network is a copy beside it): a run resumed from either saves epoch
    4's network, byte for byte the uninterrupted run's but for the timings."""
    ck = tmp_path / "ck"
    every_epoch = ["--checkpoint-dir", str(ck), "--checkpoint-interval-s", "0"]
    _, reference = _records(_train(tmp_path / "reference", capsys, *PEAKS_EARLY, *every_epoch))
    assert reference.result is not None and reference.result.epoch == 4
    network = _without_timings(reference.network)
    for epoch in (4, 5):
        path = ck / f"checkpoint-e{epoch:06d}-s00000000.gqckpt"
        out = tmp_path / f"from-{epoch}"
        _, resumed = _records(_train(out, capsys, *PEAKS_EARLY, "--resume-from", str(path)))
        assert resumed.result == reference.result
        assert _without_timings(resumed.network) == network


def _without_timings(path: Path) -> str:
    import json

    document = json.loads(path.read_text())
    for key in ("epoch_s", "step_ms", "total_s"):
        document["metrics"].pop(key, None)
    return json.dumps(document, sort_keys=True)

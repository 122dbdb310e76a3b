"""`python -m trainer` and `python trainer/train.py`: EPOCH lines, exit codes, the saved
network and its reload."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import protocol
from trainer.cli import main
from trainer.evaluate import evaluate
from trainer.export import load_network

ROOT = Path(__file__).resolve().parents[2]
EPOCH = re.compile(r"^EPOCH (\d+)/(\d+)((?: [a-z_]+=-?[0-9.]+(?:e-?\d+)?)+)$")
REQUIRED = {"train_loss", "train_acc", "test_acc", "test_acc_discrete", "epoch_s"}
TINY = [
    "--gates",
    "120",
    "--network-layers",
    "2",
    "--group-sum-tau",
    "5",
    "--epochs",
    "3",
    "--batch-size",
    "64",
    "--learning-rate",
    "0.05",
]


def epoch_metrics(stdout: str) -> list[dict[str, float]]:
    rows = []
    for line in stdout.splitlines():
        if line.startswith("EPOCH"):
            match = EPOCH.match(line)
            assert match, f"malformed EPOCH line: {line!r}"
            pairs = dict(p.split("=") for p in match.group(3).split())
            rows.append({k: float(v) for k, v in pairs.items()})
    return rows


def run_cli(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def test_module_run_prints_one_epoch_line_per_epoch_and_saves_the_network(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    proc = run_cli(
        ["-m", "trainer", "--gate-optimizer", "softmax", *TINY, "--output-dir", str(out)]
    )
    assert proc.returncode == 0, proc.stderr
    rows = epoch_metrics(proc.stdout)
    assert len(rows) == 3
    assert [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("EPOCH")] == [
        "1/3",
        "2/3",
        "3/3",
    ]
    for row in rows:
        assert REQUIRED <= row.keys()
        assert 0 <= row["test_acc_discrete"] <= 1 and row["epoch_s"] >= 0
    assert proc.stdout.rstrip().splitlines()[-1].startswith("SUMMARY ")

    network = load_network(out)
    doc = json.loads((out / "network.json").read_text())
    assert doc["hyperparameters"]["gateOptimizer"] == "softmax"
    assert [len(layer.op) for layer in network.layers] == [120, 120]
    accuracy, samples = evaluate(network)
    assert samples == 360
    summary = protocol.Summary.parse(proc.stdout.rstrip().splitlines()[-1])
    assert summary is not None and summary.result is not None  # the kept epoch's network
    kept = rows[summary.result.epoch - 1]["test_acc_discrete"]
    assert accuracy == pytest.approx(kept, abs=1e-4)

    again = run_cli(["-m", "trainer.evaluate", str(out)])
    assert again.returncode == 0, again.stderr
    assert f"test_acc_discrete={kept:.4f}" in again.stdout


def test_seed_entry_point_runs_as_a_script_from_anywhere(tmp_path: Path) -> None:
    proc = run_cli(
        [
            str(ROOT / "trainer" / "train.py"),
            "--gate-optimizer",
            "entmax",
            "--gates",
            "40",
            "--network-layers",
            "1",
            "--epochs",
            "1",
            "--output-dir",
            str(tmp_path / "r"),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(epoch_metrics(proc.stdout)) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--residual-layers", "5", "--network-layers", "4"], "--residual-layers"),
        (["--dataset", "breast_cancer"], "--grouping"),
        (["--gates", "0"], "--gates"),
        (["--epochs", "-1"], "--epochs"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--gate-estimator", "hard"], "--gate-estimator"),
        (["--residual-pass-prob", "1"], "--residual-pass-prob"),
        (["--residual-pass-prob", "0.05"], "--residual-pass-prob"),
        (["--group-sum-tau", "nan"], "--group-sum-tau"),
        (["--gates", "ten"], "--gates"),
        (["--gate-optimizer", "adam"], "--gate-optimizer"),
        (["--gate-optimizer", "gumbel_softmax", "--noise-temp", "0"], "--noise-temp"),
        (["--backend", "cpp", "--device", "cuda"], "--device cuda|CPU"),
        # found only once the model is built (trainer.errors.RunConfigError): exit 2 as well
        (["--backend", "difflogic", "--device", "cpu"], "'difflogic' needs a CUDA device"),
        (["--unknown-flag", "1"], "unrecognized"),
    ],
)
def test_invalid_arguments_exit_non_zero_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--output-dir", str(tmp_path)])
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_missing_data_exits_1_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "mirror"
    empty.mkdir()
    monkeypatch.setenv("GATEQUEUE_MNIST_URL", empty.as_uri() + "/")
    code = main(
        [
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path / "data"),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_trains_on_file_datasets(
    dataset: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_trainer_data import fake_mnist, write_cifar, write_mnist

    monkeypatch.setenv("GATEQUEUE_MNIST_URL", tmp_path.as_uri() + "/nowhere/")
    if dataset == "mnist":
        write_mnist(tmp_path / "mnist", fake_mnist(), gz=True)
    else:
        write_cifar(tmp_path / "cifar-10-batches-py")
    code = main(
        [
            "--dataset",
            dataset,
            "--data-dir",
            str(tmp_path),
            "--gates",
            "200",
            "--network-layers",
            "2",
            "--epochs",
            "2",
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    assert len(epoch_metrics(capsys.readouterr().out)) == 2


def test_a_loss_that_is_no_longer_finite_fails_the_run_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a run whose loss was NaN (GroupSum over a subnormal tau) printed EPOCH lines
    without `train_loss`, saved a one-class network and exited 0, so its job Succeeded. The
    options' bounds now refuse such a tau; the trainer guards the loss itself as well, for
    whatever else drives it to NaN (here the tau is set past the option checks)."""
    from trainer.cli import build_parser, validate
    from trainer.errors import Diverged
    from trainer.loop import run

    parser = build_parser()
    out = tmp_path / "out"
    args = parser.parse_args(
        [*TINY, "--gate-optimizer", "softmax", "--output-dir", str(out), "--no-circuit"]
    )
    validate(parser, args)
    args.group_sum_tau = 1e-300
    with pytest.raises(Diverged, match="the training loss became nan in epoch 1"):
        run(args)
    assert "EPOCH" not in capsys.readouterr().out
    assert not (out / "network.json").exists()

"""Registered data sets keep what a run needs of their shape (docs/datasets.md): an image's
height, width and channels through encoding (thermometer bits become channels), and the
uploader's own validation split, which a run validates on; and a network trained on one is
evaluated and verified again from the encoded file (`--dataset-file`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_trainer_encode import LIMIT, write_npz

from trainer.data import load_dataset
from trainer.data.catalog import ImageShape
from trainer.data.encode import EncodeOptions, encode_file
from trainer.data.errors import BadData
from trainer.data.split import split_for_validation

ROOT = Path(__file__).resolve().parents[2]


def bars(n: int, seed: int, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) uint8 images of a horizontal (class 0) or vertical (class 1) bar at
    a random place, on noise; the last column is always 0 (a pixel that is 0/1 only)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    y = rng.integers(0, 2, n)
    at = rng.integers(0, size - 1, n)
    for i in range(n):
        if y[i] == 0:
            x[i, at[i], : size - 1] = 250
        else:
            x[i, :, at[i]] = 250
    x[:, :, size - 1] = 0
    return x, y


def test_a_grey_image_keeps_its_shape_with_thresholds_as_channels(tmp_path: Path) -> None:
    x, y = bars(200, 0)
    src = write_npz(tmp_path / "in.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    summary = encode_file(src, tmp_path / "out.npz", EncodeOptions(bits=3), LIMIT)
    # Every pixel gets 3 bits, the all-zero column too: one width for the whole image.
    assert summary.image == ImageShape(8, 8, 3)
    assert summary.inputs == 8 * 8 * 3 and summary.binary == 0
    data = load_dataset("bars", file=tmp_path / "out.npz")
    assert data.image == ImageShape(8, 8, 3) and data.in_dim == 192
    with np.load(tmp_path / "out.npz") as z:
        th = np.asarray(z["thresholds"])
    # Bit (row, col, c) of a sample is pixel (row, col) above its threshold c (HWC).
    bits = data.x_train.reshape(-1, 8, 8, 3)
    for row, col, c in ((0, 0, 0), (3, 5, 2), (7, 6, 1), (2, 7, 0)):
        expected = x[:, row, col] > th[row * 8 + col, c]
        np.testing.assert_array_equal(bits[:, row, col, c], expected)


def test_colour_channels_and_bits_are_colour_major(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (60, 4, 5, 3)).astype(np.uint8)
    y = np.arange(60) % 2
    src = write_npz(tmp_path / "in.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    summary = encode_file(src, tmp_path / "out.npz", EncodeOptions(bits=2, method="uniform"), LIMIT)
    assert summary.image == ImageShape(4, 5, 6)
    data = load_dataset("rgb", file=tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as z:
        th = np.asarray(z["thresholds"]).reshape(4, 5, 3, 2)
    bits = data.x_test.reshape(10, 4, 5, 6)
    for colour in range(3):
        for t in range(2):
            expected = x[:10, :, :, colour] > th[None, :, :, colour, t]
            np.testing.assert_array_equal(bits[..., colour * 2 + t], expected)


def test_a_binary_image_stays_one_bit_per_pixel(tmp_path: Path) -> None:
    x, y = bars(100, 2)
    src = write_npz(tmp_path / "in.npz", x_train=(x > 128).astype(np.uint8), y_train=y)
    summary = encode_file(src, tmp_path / "out.npz", EncodeOptions(bits=8), LIMIT)
    assert summary.image == ImageShape(8, 8, 1) and summary.inputs == 64


def test_tabular_data_has_no_image(tmp_path: Path) -> None:
    x, y = bars(100, 3)
    src = write_npz(tmp_path / "in.npz", x_train=x.reshape(100, -1), y_train=y)
    summary = encode_file(src, tmp_path / "out.npz", EncodeOptions(bits=2), LIMIT)
    assert summary.image is None
    assert load_dataset("flat", file=tmp_path / "out.npz").image is None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((10, 2, 2, 2, 2)), "y_train": np.arange(10) % 2}, "got shape"),
        (
            {"x_train": np.zeros((10, 4, 4)), "y_train": np.arange(10) % 2,
             "x_test": np.zeros((4, 2, 8)), "y_test": np.arange(4) % 2},
            "different shapes",
        ),
    ],
    ids=["five dimensions", "splits of other image shapes"],
)  # fmt: skip
def test_image_shapes_that_cannot_be_kept_are_refused(
    tmp_path: Path, arrays: dict[str, Any], message: str
) -> None:
    src = write_npz(tmp_path / "in.npz", **arrays)
    with pytest.raises(BadData, match=message):
        encode_file(src, tmp_path / "out.npz", EncodeOptions(), LIMIT)


def test_the_given_validation_split_is_the_one_a_run_uses(tmp_path: Path) -> None:
    x, y = bars(300, 4)
    src = write_npz(tmp_path / "in.npz", x_train=x[:200], y_train=y[:200],
                    x_valid=x[200:250], y_valid=y[200:250],
                    x_test=x[250:], y_test=y[250:])  # fmt: skip
    summary = encode_file(src, tmp_path / "out.npz", EncodeOptions(bits=2), LIMIT)
    assert (summary.train, summary.valid, summary.test) == (200, 50, 50)
    data = load_dataset("bars", file=tmp_path / "out.npz")
    assert data.x_valid is not None and data.y_valid is not None
    np.testing.assert_array_equal(data.y_valid, y[200:250])
    for fraction in (0.0, 0.1, 0.5):  # validFraction is ignored: the split is the data set's
        _, y_tr, x_va, y_va = split_for_validation(data, fraction, seed=3)
        assert len(y_tr) == 200 and x_va is data.x_valid and y_va is data.y_valid
    # Without a given split, validFraction draws one from the training split.
    plain = load_dataset("digits")
    assert plain.x_valid is None
    _, y_tr, _, y_va = split_for_validation(plain, 0.1, seed=3)
    assert len(y_va) == pytest.approx(0.1 * len(plain.y_train), abs=10)
    assert len(y_tr) + len(y_va) == len(plain.y_train)


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GATEQUEUE_CIRCUIT_CACHE": str(tmp_path / "cc")}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_conv_run_on_an_uploaded_image_set_is_evaluated_and_verified_from_its_file(
    tmp_path: Path,
) -> None:
    """The whole path a user takes: an (n, H, W) npz with its own validation split encoded,
    a conv network trained on it (validating on that split), then `trainer.evaluate` and
    `trainer.circuit verify` given the encoded file agree with the run."""
    x, y = bars(400, 5)
    src = write_npz(tmp_path / "in.npz", x_train=x[:240], y_train=y[:240],
                    x_valid=x[240:320], y_valid=y[240:320],
                    x_test=x[320:], y_test=y[320:])  # fmt: skip
    encoded = tmp_path / "bars.encoded.npz"
    encode_file(src, encoded, EncodeOptions(bits=2), LIMIT)
    out = tmp_path / "run"
    proc = _run(
        ["-m", "trainer", "--dataset", "bars@1", "--dataset-file", str(encoded),
         "--grouping", "2", "--gate-optimizer", "softmax", "--architecture", "conv",
         "--conv-channels", "8", "--kernel-size", "3", "--pool-size", "2", "--gates", "64",
         "--network-layers", "1", "--group-sum-tau", "4", "--learning-rate", "0.05",
         "--epochs", "2", "--batch-size", "32", "--valid-fraction", "0.3", "--device", "cpu",
         "--backend", "torch", "--output-dir", str(out)],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # It validated on the data set's 80 samples, not on 30 % of its training split.
    assert "train=240 validation=80" in proc.stdout, proc.stdout
    summary = dict(p.split("=", 1) for p in proc.stdout.splitlines()[-1].split()[1:] if "=" in p)
    evaluated = _run(["-m", "trainer.evaluate", str(out), "--dataset-file", str(encoded)], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    numbers = dict(p.split("=") for p in evaluated.stdout.split())
    assert float(numbers["test_acc_discrete"]) == pytest.approx(
        float(summary["test_acc_discrete"]), abs=1e-4
    )
    assert numbers["samples"] == "80"
    verified = _run(
        ["-m", "trainer.circuit", "verify", str(out), "--dataset-file", str(encoded),
         "--verilog-samples", "0"],
        tmp_path,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert "c_vs_numpy=80/80" in verified.stdout and "verified=true" in verified.stdout
    # Without the file, a registered data set's name is no built-in: a clear error.
    missing = _run(["-m", "trainer.circuit", "verify", str(out)], tmp_path)
    assert missing.returncode == 2 and "--dataset-file" in missing.stderr

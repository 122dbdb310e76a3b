"""A user's data set encoded to bits (trainer/data/encode.py) and read back by the trainer
(trainer/data/encoded.py, `load_dataset(..., file=)`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer.data import load_dataset
from trainer.data.encode import EncodeOptions, encode_file
from trainer.data.errors import BadData

LIMIT = 1 << 30


def write_npz(path: Path, **arrays: Any) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return path


def thresholds_of(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return np.asarray(z["thresholds"])


def test_thresholds_come_from_the_training_split_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.normal(0, 1, (200, 3))
    y_train = np.arange(200) % 2
    y_test = np.arange(50) % 2
    outs = []
    for i, x_test in enumerate((rng.normal(0, 1, (50, 3)), rng.normal(100, 1, (50, 3)))):
        src = write_npz(tmp_path / f"in{i}.npz", x_train=x_train, y_train=y_train,
                        x_test=x_test, y_test=y_test)  # fmt: skip
        encode_file(src, tmp_path / f"out{i}.npz", EncodeOptions(bits=4), LIMIT)
        outs.append(thresholds_of(tmp_path / f"out{i}.npz"))
    np.testing.assert_array_equal(outs[0], outs[1])
    expected = np.quantile(x_train, np.arange(1, 5) / 5, axis=0).T
    np.testing.assert_allclose(outs[0], expected)


def test_uniform_thresholds_binary_features_and_bits(tmp_path: Path) -> None:
    x = np.stack([np.linspace(0, 10, 100), np.arange(100) % 2], axis=1)
    y = (np.arange(100) >= 50).astype(int)
    src = write_npz(tmp_path / "in.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    summary = encode_file(src, tmp_path / "out.npz", EncodeOptions(bits=4, method="uniform"), LIMIT)
    assert (summary.inputs, summary.binary, summary.thermometer) == (5, 1, 1)
    th = thresholds_of(tmp_path / "out.npz")
    np.testing.assert_allclose(th[0], [2, 4, 6, 8])
    assert th[1, 0] == 0.5 and np.isnan(th[1, 1:]).all()
    data = load_dataset("mine", file=tmp_path / "out.npz")
    assert data.classes == 2 and data.in_dim == 5
    manual = np.concatenate([x[:10, :1] > th[0][None, :], x[:10, 1:] > 0.5], axis=1)
    np.testing.assert_array_equal(data.x_test, manual.astype(np.uint8))
    np.testing.assert_array_equal(data.y_test, y[:10])


def test_made_test_split_is_stratified_and_fixed_by_its_seed(tmp_path: Path) -> None:
    x = np.arange(500, dtype=float)[:, None]
    y = np.where(np.arange(500) < 400, 0, 1)
    src = write_npz(tmp_path / "in.npz", x_train=x, y_train=y)
    splits = []
    for seed in (0, 0, 1):
        out = tmp_path / f"out{len(splits)}.npz"
        summary = encode_file(src, out, EncodeOptions(bits=2, split_seed=seed), LIMIT)
        assert (summary.train, summary.test, summary.test_made) == (400, 100, True)
        with np.load(out) as z:
            splits.append((z["y_test"].tolist(), z["x_test"].tobytes()))
    assert splits[0] == splits[1] != splits[2]
    assert splits[0][0].count(1) == 20 and splits[0][0].count(0) == 80


def test_labels_renumbered_in_sorted_order(tmp_path: Path) -> None:
    x = np.arange(40, dtype=float)[:, None]
    y = np.where(np.arange(40) % 2, 7, -3)
    src = write_npz(tmp_path / "in.npz", x_train=x, y_train=y)
    summary = encode_file(src, tmp_path / "out.npz", EncodeOptions(), LIMIT)
    assert summary.labels == ["-3", "7"]
    data = load_dataset("mine", file=tmp_path / "out.npz")
    assert set(data.y_train.tolist()) == {0, 1}


def test_test_labels_unknown_to_training_refused(tmp_path: Path) -> None:
    x = np.zeros((10, 2))
    src = write_npz(tmp_path / "in.npz", x_train=x, y_train=np.arange(10) % 2,
                    x_test=x, y_test=np.full(10, 5))  # fmt: skip
    with pytest.raises(BadData, match="label 5, which the training split does not"):
        encode_file(src, tmp_path / "out.npz", EncodeOptions(), LIMIT)
    assert not (tmp_path / "out.npz").exists()

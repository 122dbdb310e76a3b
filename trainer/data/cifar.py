"""CIFAR-10 from its python batches (`cifar-10-batches-py`), read without arbitrary pickle.

Looked up in `<data_dir>/cifar-10-batches-py/` and then `<data_dir>/`. The batches are
pickles; a restricted unpickler admits only what they contain (dicts, lists, bytes, numpy
arrays), so a crafted file in the data dir cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.errors import DataError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
FOLDER = "cifar-10-batches-py"

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode bytes with it
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _find(data_dir: Path, name: str) -> Path:
    for folder in (data_dir / FOLDER, data_dir):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"CIFAR-10 file missing: expected {data_dir / FOLDER / name} (or {data_dir / name}); "
        "unpack cifar-10-python.tar.gz into the data dir"
    )


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch: (n, 3072) uint8 rows (1024 red, 1024 green, 1024 blue), (n,) labels."""
    try:
        batch = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path}: data {data.shape} and labels {labels.shape} do not fit")
    return data, labels


def load_cifar10(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train (50000, 3072) uint8, train labels, test (10000, 3072), test labels)."""
    train = [read_batch(_find(data_dir, name)) for name in TRAIN_BATCHES]
    x_te, y_te = read_batch(_find(data_dir, TEST_BATCH))
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        x_te,
        y_te,
    )

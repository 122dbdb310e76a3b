"""Data sets for the trainer, binarized to {0, 1} inputs: `load_dataset(name, data_dir)`.

The exports load lazily: `trainer.data.catalog` (names and class counts) must be importable
where numpy is not installed (the API image).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.data.catalog import CLASSES, DATASETS
from trainer.data.errors import DataError

if TYPE_CHECKING:
    from trainer.data.datasets import Dataset, load_dataset

__all__ = ["CLASSES", "DATASETS", "DataError", "Dataset", "load_dataset"]


def __getattr__(name: str) -> Any:
    if name in ("Dataset", "load_dataset"):
        from trainer.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'trainer.data' has no attribute {name!r}")

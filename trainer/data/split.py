"""The validation split: a stratified part of the training set, fixed by the run's seed,
that is never trained on (docs/trainer.md, "Validation and the kept network").

Selection (which epoch's network a run keeps, which run a sweep calls best) reads only
accuracies on this split, never on the test set, so the test accuracy a researcher reads
is not tuned to the test set. Drawn from its own numpy Generator, so it leaves every other
random stream (and with it a resumed run's exact repetition) untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trainer.data.datasets import Dataset

MAX_FRACTION = 0.5


def validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) into `y`, both sorted and disjoint, together
    every index once. Each class gives round(fraction x its count) samples (at least one
    where the class has two or more and fraction > 0), so the split keeps the class mix."""
    if not 0 <= fraction <= MAX_FRACTION:
        raise ValueError(f"the validation fraction must be in [0, {MAX_FRACTION}], got {fraction}")
    everything = np.arange(len(y))
    if fraction == 0:
        return everything, everything[:0]
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = round(fraction * len(members))
        if take == 0 and len(members) >= 2:
            take = 1
        chosen.append(rng.permutation(members)[:take])
    valid = np.sort(np.concatenate(chosen)) if chosen else everything[:0]
    train = np.setdiff1d(everything, valid, assume_unique=True)
    return train, valid


def split_for_validation(
    data: Dataset, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_valid, y_valid) of a run. A data set that brings its own
    validation split (a registered npz's `x_valid`) is validated on that, and trained on all
    of its training split: `fraction` is then ignored (docs/datasets.md, "Formats"), so a
    data set's official split is what selection reads, the same for every run. Otherwise
    `fraction` of the training split is held out (validation_split)."""
    if data.x_valid is not None and data.y_valid is not None:
        return data.x_train, data.y_train, data.x_valid, data.y_valid
    train, valid = validation_split(data.y_train, fraction, seed)
    return data.x_train[train], data.y_train[train], data.x_train[valid], data.y_train[valid]

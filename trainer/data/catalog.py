"""The data sets a run may name, their class counts and their sizes.

Apart from the loaders so the API can validate `dataset` and `grouping`, and estimate a
run's memory (trainer.memory), without numpy (its image has none); `trainer.data.datasets`
registers a loader for each name here, and the tests check these sizes against what the
loaders return.
"""

from __future__ import annotations

from dataclasses import dataclass

# A data set's name (registered ones too: docs/datasets.md), and how a job names one:
# `name` (the latest version) or `name@version`.
DATASET_NAME_MAX = 64
NAME_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{DATASET_NAME_MAX - 1}}}"
DATASET_PATTERN = rf"^{NAME_PATTERN}(@[1-9][0-9]{{0,8}})?$"

CLASSES: dict[str, int] = {"digits": 10, "breast_cancer": 2, "mnist": 10, "cifar10": 10}
DATASETS: tuple[str, ...] = tuple(CLASSES)


@dataclass(frozen=True)
class ImageShape:
    """An image data set's encoded layout: `height` x `width` pixels of `channels` bits,
    stored height-major, then width, then channel (HWC): bit (y, x, c) of a sample is input
    (y * width + x) * channels + c. Thermometer bits are channels: digits has 4 (one per
    threshold), mnist 1, cifar10 9 (3 colours x 3 thresholds, colour-major); a registered
    data set uploaded as (n, H, W) or (n, H, W, C) values has C x its bits per pixel
    (trainer.data.encode)."""

    height: int
    width: int
    channels: int

    @property
    def inputs(self) -> int:
        return self.height * self.width * self.channels


@dataclass(frozen=True)
class DataShape:
    """A binarized data set's size: `inputs` bits per sample (after thermometer encoding),
    `train` and `test` samples, and `raw_features` values per sample before encoding (what
    the loader holds in memory while it encodes); `image` the inputs' layout where they are
    an image (what a conv network reads), None for tabular data."""

    inputs: int
    train: int
    test: int
    raw_features: int
    image: ImageShape | None = None
    valid: int = 0  # a registered data set's given validation split (docs/datasets.md)


# The data sets a convolutional network can read (trainer.conv); the others have no shape.
IMAGE_SHAPES: dict[str, ImageShape] = {
    "digits": ImageShape(8, 8, 4),
    "mnist": ImageShape(28, 28, 1),
    "cifar10": ImageShape(32, 32, 9),
}

SHAPES: dict[str, DataShape] = {
    "digits": DataShape(256, 1437, 360, raw_features=64, image=IMAGE_SHAPES["digits"]),
    "breast_cancer": DataShape(inputs=240, train=455, test=114, raw_features=30),
    "mnist": DataShape(784, 60_000, 10_000, raw_features=784, image=IMAGE_SHAPES["mnist"]),
    "cifar10": DataShape(9216, 50_000, 10_000, raw_features=3072, image=IMAGE_SHAPES["cifar10"]),
}

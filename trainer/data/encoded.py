"""The encoded file of a registered data set (docs/datasets.md, "The encoded file"): what
the API makes of an upload (trainer.data.encode) and a worker hands its trainer
(`--dataset-file`).

An uncompressed npz: `x_<split>` the bits of each sample packed along the row
(np.packbits, `inputs` bits used), `y_<split>` class indices, for the splits `train`,
`test` and optionally `valid` (the uploader's own validation split); `inputs`, `classes`,
`version`, `thresholds` (features x bits; NaN where a feature has fewer), kept so that
anyone can encode new samples the same way, and, for an image, `image` (height, width,
channels: the bits' HWC layout, trainer.data.catalog.ImageShape).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.catalog import ImageShape
from trainer.data.errors import DataError

FORMAT_VERSION = 1


def write_encoded(
    path: Path,
    bits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    *,
    inputs: int,
    classes: int,
    thresholds: np.ndarray,
    image: ImageShape | None = None,
) -> None:
    arrays = {f"x_{s}": b for s, b in bits.items()} | {
        f"y_{s}": y.astype(np.int64) for s, y in labels.items()
    }
    if image is not None:
        arrays["image"] = np.asarray([image.height, image.width, image.channels], np.int64)
    with open(path, "wb") as fh:
        np.savez(
            fh,
            **arrays,  # type: ignore[arg-type]
            inputs=np.int64(inputs),
            classes=np.int64(classes),
            version=np.int64(FORMAT_VERSION),
            thresholds=thresholds,
        )


@dataclass(frozen=True)
class Encoded:
    """An encoded file, unpacked: bits (n, inputs) uint8 and labels int64 per split;
    `x_valid`/`y_valid` None where the uploader gave no validation split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    x_valid: np.ndarray | None = None
    y_valid: np.ndarray | None = None
    image: ImageShape | None = None


def load_encoded(path: Path) -> Encoded:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != FORMAT_VERSION:
                raise DataError(
                    f"{path}: encoded data set version {int(z['version'])}, "
                    f"this trainer reads {FORMAT_VERSION}"
                )
            inputs = int(z["inputs"])
            splits: dict[str, np.ndarray] = {}
            for split in ("train", "valid", "test"):
                if split == "valid" and "x_valid" not in z.files:
                    continue
                x = np.unpackbits(z[f"x_{split}"], axis=1, count=inputs)
                y = z[f"y_{split}"].astype(np.int64)
                if len(x) != len(y):
                    raise DataError(f"{path}: x_{split} and y_{split} differ in length")
                splits[f"x_{split}"], splits[f"y_{split}"] = x, y
            image = None
            if "image" in z.files:
                image = ImageShape(*(int(v) for v in z["image"]))
                if image.inputs != inputs:
                    raise DataError(f"{path}: image {image} does not hold {inputs} inputs")
            return Encoded(**splits, classes=int(z["classes"]), image=image)
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not an encoded data set: {exc}") from None

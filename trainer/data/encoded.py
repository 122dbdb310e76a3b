"""The encoded file of a registered data set (docs/datasets.md, "The encoded file"): what
the API makes of an upload (trainer.data.encode) and a worker hands its trainer
(`--dataset-file`).

An uncompressed npz: `x_<split>` the bits of each sample packed along the row
(np.packbits, `inputs` bits used), `y_<split>` class indices, for the splits `train`,
`test` and optionally `valid`; `inputs`, `classes`, `version`, and `thresholds` (features x
bits; NaN where a feature has fewer), kept so that anyone can encode new samples the same way.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

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
) -> None:
    arrays = {f"x_{s}": b for s, b in bits.items()} | {
        f"y_{s}": y.astype(np.int64) for s, y in labels.items()
    }
    with open(path, "wb") as fh:
        np.savez(
            fh,
            **arrays,  # type: ignore[arg-type]
            inputs=np.int64(inputs),
            classes=np.int64(classes),
            version=np.int64(FORMAT_VERSION),
            thresholds=thresholds,
        )


def load_encoded(
    path: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(x_train bits (n, inputs) uint8, y_train, x_test bits, y_test, classes)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != FORMAT_VERSION:
                raise DataError(
                    f"{path}: encoded data set version {int(z['version'])}, "
                    f"this trainer reads {FORMAT_VERSION}"
                )
            inputs = int(z["inputs"])
            classes = int(z["classes"])
            out = []
            for split in ("train", "test"):
                x = np.unpackbits(z[f"x_{split}"], axis=1, count=inputs)
                y = z[f"y_{split}"].astype(np.int64)
                if len(x) != len(y):
                    raise DataError(f"{path}: x_{split} and y_{split} differ in length")
                out += [x, y]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not an encoded data set: {exc}") from None
    return out[0], out[1], out[2], out[3], classes

"""The four data sets and how each becomes binary inputs.

Logic gates read bits, so every feature is thermometer-encoded: one input per threshold,
1 where the value exceeds it. The splits are fixed (not drawn from --seed), so accuracies
of different runs are measured on the same test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.catalog import CLASSES, DATASETS, IMAGE_SHAPES, ImageShape
from trainer.data.cifar import load_cifar10
from trainer.data.encoded import load_encoded
from trainer.data.errors import DataError
from trainer.data.mnist import FILES as MNIST_FILES
from trainer.data.mnist import find_file as find_mnist_file
from trainer.data.mnist import load_mnist

__all__ = ["CLASSES", "DATASETS", "DataError", "Dataset", "load_dataset"]

# digits pixels are integers 0..16; these cut them into five levels per pixel.
DIGITS_THRESHOLDS: tuple[float, ...] = (0.5, 4.5, 8.5, 12.5)
# breast_cancer: per-feature quantiles of the training split.
BREAST_CANCER_QUANTILES = 8
# cifar10, as the difflogic paper: thresholds (i + 1) / (n + 1) of each channel's [0, 1].
CIFAR10_THRESHOLDS = 3
MNIST_THRESHOLD = 0.5
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    """Binary inputs (uint8 0/1, one row per sample) and integer labels. `x_valid` and
    `y_valid`: a validation split the data set brings (a registered one's `x_valid`), which a
    run validates on instead of drawing one (trainer.data.split); None for the built-ins.
    `image`: the inputs' image layout (HWC, trainer.data.catalog), None for tabular data."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    encoding: str
    x_valid: np.ndarray | None = None
    y_valid: np.ndarray | None = None
    image: ImageShape | None = None

    @property
    def in_dim(self) -> int:
        return int(self.x_train.shape[1])


def thermometer(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n, f) values and (t,) or (f, t) thresholds -> (n, f * t) bits, feature-major."""
    th = np.broadcast_to(thresholds, (values.shape[1], thresholds.shape[-1]))
    bits = values[:, :, None] > th[None, :, :]
    return bits.reshape(values.shape[0], -1).astype(np.uint8)


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    raw = load_digits()
    x_tr, y_tr, x_te, y_te = _split(raw.data, raw.target)
    th = np.asarray(DIGITS_THRESHOLDS)
    return Dataset(
        "digits",
        thermometer(x_tr, th),
        y_tr.astype(np.int64),
        thermometer(x_te, th),
        y_te.astype(np.int64),
        10,
        f"8x8 pixels > {list(DIGITS_THRESHOLDS)}",
        image=IMAGE_SHAPES["digits"],
    )


def _breast_cancer() -> Dataset:
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    x_tr, y_tr, x_te, y_te = _split(raw.data, raw.target)
    q = np.arange(1, BREAST_CANCER_QUANTILES + 1) / (BREAST_CANCER_QUANTILES + 1)
    th = np.quantile(x_tr, q, axis=0).T  # (features, thresholds), from training data only
    return Dataset(
        "breast_cancer",
        thermometer(x_tr, th),
        y_tr.astype(np.int64),
        thermometer(x_te, th),
        y_te.astype(np.int64),
        2,
        f"30 features > {BREAST_CANCER_QUANTILES} training-split quantiles each",
    )


def _mnist(data_dir: Path) -> Dataset:
    x_tr, y_tr, x_te, y_te = load_mnist(data_dir)
    th = np.asarray([MNIST_THRESHOLD * 255])
    flat_tr = x_tr.reshape(len(x_tr), -1)
    flat_te = x_te.reshape(len(x_te), -1)
    return Dataset(
        "mnist",
        thermometer(flat_tr, th),
        y_tr.astype(np.int64),
        thermometer(flat_te, th),
        y_te.astype(np.int64),
        10,
        f"28x28 pixels > {MNIST_THRESHOLD} of 255",
        image=IMAGE_SHAPES["mnist"],
    )


def _cifar10(data_dir: Path) -> Dataset:
    x_tr, y_tr, x_te, y_te = load_cifar10(data_dir)
    # Rows are colour-major (3, 32, 32); encode pixel-major so each pixel's 3 colours x 3
    # thresholds are its 9 channels (HWC, trainer.data.catalog.IMAGE_SHAPES).
    x_tr, x_te = (
        x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).reshape(-1, 3072) for x in (x_tr, x_te)
    )
    n = CIFAR10_THRESHOLDS
    th = np.asarray([255 * (i + 1) / (n + 1) for i in range(n)])
    return Dataset(
        "cifar10",
        thermometer(x_tr, th),
        y_tr.astype(np.int64),
        thermometer(x_te, th),
        y_te.astype(np.int64),
        10,
        f"32x32x3 pixel values > {[round((i + 1) / (n + 1), 3) for i in range(n)]}",
        image=IMAGE_SHAPES["cifar10"],
    )


def _registered(name: str, file: Path) -> Dataset:
    e = load_encoded(file)
    return Dataset(
        name, e.x_train, e.y_train, e.x_test, e.y_test, e.classes,
        f"registered data set ({file.name})", x_valid=e.x_valid, y_valid=e.y_valid,
        image=e.image,
    )  # fmt: skip


# -- kept in memory by a warm trainer (trainer/forkserver.py) ------------------------------
# A fork server loads each data set it serves once, before it forks the run, so the run and
# every later one inherit it ready (copy-on-write pages, nothing copied). Keyed by what
# identifies the bytes: a built-in's name (and folder, for the downloaded ones), a
# registered data set's file (named by its SHA-256 in the worker's cache) with its size and
# modification time. Least recently used ones go first above KEPT_MAX_BYTES.
KEPT_MAX_BYTES = 2 << 30
_kept: dict[tuple[str, ...], Dataset] = {}
_not_kept: set[tuple[str, ...]] = set()  # too large or unloadable here: not tried again


def _kept_key(name: str, data_dir: Path, file: Path | None) -> tuple[str, ...] | None:
    if file is not None:
        try:
            st = file.stat()
        except OSError:
            return None
        return ("file", name, str(file.resolve()), str(st.st_size), str(st.st_mtime_ns))
    if name in ("digits", "breast_cancer"):
        return ("builtin", name)
    if name in ("mnist", "cifar10"):
        return ("builtin", name, str(data_dir.resolve()))
    return None


def _nbytes(data: Dataset) -> int:
    arrays = (data.x_train, data.y_train, data.x_valid, data.y_valid, data.x_test, data.y_test)
    return sum(a.nbytes for a in arrays if a is not None)


def _on_disk(name: str, data_dir: Path) -> bool:
    """A built-in that loads without a download (a fork server never downloads)."""
    if name == "mnist":
        return all(find_mnist_file(data_dir, f) is not None for f in MNIST_FILES.values())
    if name == "cifar10":
        return False  # 0.5 GB of bits: loaded by the runs that need it, not kept
    return True


def keep_loaded(name: str, data_dir: str | Path = "data", file: str | Path | None = None) -> bool:
    """Load the data set into this process's memory for the processes it forks (a warm
    trainer); True when it is kept. A data set that cannot be loaded here (missing, needs a
    download, too large) is not an error: the run loads it itself and reports what fails."""
    data_dir, path = Path(data_dir), None if file is None else Path(file)
    key = _kept_key(name, data_dir, path)
    if key is None:
        return False
    if key in _kept:
        _kept[key] = _kept.pop(key)  # most recently used last
        return True
    if key in _not_kept:  # loading it again before every run would only delay each
        return False
    if path is None and not _on_disk(name, data_dir):
        return False
    try:
        data = load_dataset(name, data_dir, path)
    except (DataError, OSError, ValueError):
        _not_kept.add(key)
        return False
    if _nbytes(data) > KEPT_MAX_BYTES:
        _not_kept.add(key)
        return False
    _kept[key] = data
    while sum(_nbytes(d) for d in _kept.values()) > KEPT_MAX_BYTES:
        del _kept[next(iter(_kept))]
    return True


def forget_others(name: str, data_dir: str | Path = "data", file: str | Path | None = None) -> None:
    """A forked run's first step: drop the kept data sets it does not use, so its memory
    cap (RLIMIT_DATA) is not spent on them."""
    key = _kept_key(name, Path(data_dir), None if file is None else Path(file))
    for other in [k for k in _kept if k != key]:
        del _kept[other]


def load_dataset(
    name: str, data_dir: str | Path = "data", file: str | Path | None = None
) -> Dataset:
    """The named data set, binarized: from `file` (a registered data set's encoded file,
    trainer.data.encoded) when given, else a built-in. Raises DataError naming any file that
    is missing. A data set a warm trainer kept (`keep_loaded`) is returned as it is."""
    if _kept:
        key = _kept_key(name, Path(data_dir), None if file is None else Path(file))
        if key is not None and key in _kept:
            return _kept[key]
    if file is not None:
        return _registered(name, Path(file))
    data_dir = Path(data_dir)
    match name:
        case "digits":
            return _digits()
        case "breast_cancer":
            return _breast_cancer()
        case "mnist":
            return _mnist(data_dir)
        case "cifar10":
            return _cifar10(data_dir)
    raise DataError(
        f"unknown dataset {name!r}: not a built-in ({', '.join(DATASETS)}), and no "
        "--dataset-file was given (a worker passes one for a registered data set)"
    )

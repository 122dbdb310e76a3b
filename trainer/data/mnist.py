"""MNIST from the four standard IDX files, downloaded into the data dir when absent.

Files are looked up as `<data_dir>/mnist/<name>` and `<data_dir>/<name>`, each with or
without `.gz`. Downloads go to `<data_dir>/mnist/<name>.gz` from the mirrors in order;
GATEQUEUE_MNIST_URL (a base URL, file:// too) replaces the list.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from trainer import environment
from trainer.data.errors import DataError
from trainer.data.idx import read_idx

FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DOWNLOAD_TIMEOUT_S = 60.0


def mirrors() -> list[str]:
    env = environment.mnist_url()
    return [env] if env else list(MIRRORS)


def find_file(data_dir: Path, name: str) -> Path | None:
    for folder in (data_dir / "mnist", data_dir):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def download(name: str, data_dir: Path) -> Path:
    """Fetch `<name>.gz` into `<data_dir>/mnist/`; raises DataError listing what was tried."""
    target = data_dir / "mnist" / f"{name}.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for base in mirrors():
        url = base.rstrip("/") + f"/{name}.gz"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            ):
                shutil.copyfileobj(response, out)
            read_idx(Path(tmp))  # refuse to keep a file that is not IDX (an error page, say)
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError, ValueError, DataError) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(
        f"MNIST file {name} is missing: expected {data_dir / 'mnist' / name}(.gz) "
        f"or {data_dir / name}(.gz), and downloading it failed ({'; '.join(failures)})"
    )


def load_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images (n, 28, 28) uint8, train labels, test images, test labels)."""
    arrays = {}
    for key, name in FILES.items():
        path = find_file(data_dir, name) or download(name, data_dir)
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"MNIST {split} files disagree: images {images.shape}, labels {labels.shape}"
            )
    return (
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
    )

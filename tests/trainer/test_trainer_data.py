"""Data loaders on files the tests write: IDX for mnist (local and downloaded), pickles for
cifar10, and the shipped scikit-learn sets."""

from __future__ import annotations

import functools
import gzip
import http.server
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from trainer.data import DataError, load_dataset
from trainer.data import mnist as mnist_module
from trainer.data.cifar import FOLDER, TEST_BATCH, TRAIN_BATCHES
from trainer.data.idx import parse_idx


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0 0 0x08 ndim, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 30, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
    }


def write_mnist(folder: Path, arrays: dict[str, np.ndarray], *, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Downloads go to an empty local folder: a test never reaches the network."""
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv("GATEQUEUE_MNIST_URL", empty.as_uri() + "/")


def test_idx_round_trip_and_bad_magic() -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(array)), array)
    assert np.array_equal(parse_idx(gzip.compress(idx_bytes(array))), array)
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"<html>not found</html>")
    with pytest.raises(DataError, match="needs"):
        parse_idx(idx_bytes(array)[:-1])


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.usefixtures("no_download")
def test_mnist_loads_local_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = fake_mnist()
    write_mnist(tmp_path / "mnist", arrays, gz=gz)
    data = load_dataset("mnist", tmp_path)
    images = arrays["train-images-idx3-ubyte"]
    assert data.x_train.shape == (30, 784) and data.x_test.shape == (12, 784)
    assert np.array_equal(data.x_train, (images.reshape(30, -1) > 127.5).astype(np.uint8))
    assert np.array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.classes == 10


@pytest.mark.usefixtures("no_download")
def test_mnist_missing_file_names_the_file(tmp_path: Path) -> None:
    arrays = fake_mnist()
    del arrays["t10k-labels-idx1-ubyte"]
    write_mnist(tmp_path, arrays, gz=False)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*missing|missing.*t10k-labels"):
        load_dataset("mnist", tmp_path)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server on 127.0.0.1 serving gzipped fake MNIST; yields (url, requests)."""
    root = tmp_path / "mirror"
    write_mnist(root, fake_mnist(seed=7), gz=True)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_mnist_downloads_missing_files(
    tmp_path: Path, mirror: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, requests = mirror
    monkeypatch.setenv("GATEQUEUE_MNIST_URL", url)
    data_dir = tmp_path / "data"
    data = load_dataset("mnist", data_dir)
    assert len(requests) == 4
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == sorted(
        f"{name}.gz" for name in mnist_module.FILES.values()
    )
    expected = fake_mnist(seed=7)["train-labels-idx1-ubyte"]
    assert np.array_equal(data.y_train, expected)
    load_dataset("mnist", data_dir)  # now present: nothing is fetched again
    assert len(requests) == 4


def test_mnist_download_failure_names_file_and_url(
    tmp_path: Path, mirror: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = mirror
    monkeypatch.setenv("GATEQUEUE_MNIST_URL", url + "nothing-here/")
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "nothing-here" in message
    assert not list((tmp_path / "mnist").glob("*"))  # no partial file is left behind


def _batch(rng: np.random.Generator, n: int) -> dict[bytes, object]:
    return {
        b"batch_label": b"fake",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"x.png"] * n,
    }


def write_cifar(folder: Path, seed: int = 0) -> dict[str, dict[bytes, object]]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {name: _batch(rng, 4) for name in (*TRAIN_BATCHES, TEST_BATCH)}
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return batches


def test_cifar10_loads_python_batches_and_thresholds_per_channel(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path / FOLDER)
    data = load_dataset("cifar10", tmp_path)
    assert data.x_train.shape == (20, 3072 * 3) and data.x_test.shape == (4, 3072 * 3)
    first = np.asarray(batches["data_batch_1"][b"data"])[0]
    # encoded HWC (trainer.data.catalog.IMAGE_SHAPES): pixel (y, x), colour c, threshold i
    bits = data.x_train[0].reshape(32, 32, 3, 3)
    pixels = first.reshape(3, 32, 32).transpose(1, 2, 0)
    for i, th in enumerate((0.25, 0.5, 0.75)):
        assert np.array_equal(bits[..., i], (pixels > 255 * th).astype(np.uint8))
    assert data.y_test.tolist() == batches[TEST_BATCH][b"labels"]


def test_cifar10_missing_batch_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path / FOLDER)
    (tmp_path / FOLDER / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_cifar10_refuses_pickles_that_would_run_code(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / TEST_BATCH).write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(("name", "classes"), [("digits", 10), ("breast_cancer", 2)])
def test_shipped_datasets_are_binary_and_fixed(name: str, classes: int) -> None:
    data = load_dataset(name)
    assert data.classes == classes
    assert set(np.unique(data.x_train)) <= {0, 1}
    assert len(np.unique(data.y_test)) == classes
    again = load_dataset(name)
    assert np.array_equal(data.x_test, again.x_test)  # the split does not depend on a seed


def test_unknown_dataset_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")


@pytest.fixture
def kept() -> Iterator[None]:
    """The process's kept data sets (a warm trainer's), emptied around the test."""
    from trainer.data import datasets

    datasets._kept.clear()
    datasets._not_kept.clear()
    yield
    datasets._kept.clear()
    datasets._not_kept.clear()


def _encoded(path: Path, rows: int) -> None:
    from trainer.data.encoded import write_encoded

    rng = np.random.default_rng(rows)
    x = rng.integers(0, 2, (rows, 12), dtype=np.uint8)
    y = np.arange(rows) % 2
    write_encoded(
        path, {"train": np.packbits(x, axis=1), "test": np.packbits(x[:4], axis=1)},
        {"train": y, "test": y[:4]}, inputs=12, classes=2, thresholds=np.zeros((12, 1)),
    )  # fmt: skip


def test_a_kept_data_set_is_served_from_memory_until_its_file_changes(
    kept: None, tmp_path: Path
) -> None:
    """A warm trainer keeps what it loaded (trainer.data.datasets.keep_loaded); a forked run
    gets the same arrays without reading a file, and a registered file that changed on disk
    is read again, never served stale."""
    from trainer.data.datasets import forget_others, keep_loaded

    assert keep_loaded("digits")
    assert load_dataset("digits") is load_dataset("digits")
    file = tmp_path / "a.npz"
    _encoded(file, 8)
    assert keep_loaded("mine", "data", file)
    first = load_dataset("mine", "data", file)
    assert first is load_dataset("mine", "data", file) and len(first.y_train) == 8
    _encoded(file, 10)  # another size: another key
    changed = load_dataset("mine", "data", file)
    assert changed is not first and len(changed.y_train) == 10
    forget_others("digits")
    from trainer.data import datasets

    assert [k[1] for k in datasets._kept] == ["digits"]
    # Nothing is downloaded or kept for a data set not on disk.
    assert not keep_loaded("mnist", tmp_path)
    assert not keep_loaded("nonesuch")


def test_a_data_set_too_large_to_keep_is_not_loaded_again_for_each_run(
    kept: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server asks to keep a run's data set before each fork: one it could not keep is
    not loaded (and dropped) again every time, which delayed every run's start."""
    from trainer.data import datasets

    file = tmp_path / "big.npz"
    _encoded(file, 64)
    monkeypatch.setattr(datasets, "KEPT_MAX_BYTES", 100)
    loads = []
    real = datasets._registered
    monkeypatch.setattr(datasets, "_registered", lambda *a: loads.append(a) or real(*a))
    assert not datasets.keep_loaded("big", "data", file)
    assert not datasets.keep_loaded("big", "data", file)
    assert len(loads) == 1 and not datasets._kept

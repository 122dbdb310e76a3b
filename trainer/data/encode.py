"""A user's data set, from an uploaded file to the encoded file a trainer reads
(docs/datasets.md).

`encode_file(source, target, options, limit)` reads an `.npz` or a CSV, refuses anything a
run could not use (`BadData`, whose message is what the uploader reads), and writes the
encoded file of trainer.data.encoded: bits, the way the difflogic paper feeds its UCI sets to
logic gates. Each feature is

- kept as one bit when its training values are all 0 or 1;
- one-hot over the categories seen in the training split when it is categorical (a CSV
  column that is not numeric, or one named in `categorical`);
- thermometer-encoded otherwise: `bits` thresholds, evenly spaced between the feature's
  training minimum and maximum (`uniform`) or at its training quantiles (`quantile`), one
  input per threshold, 1 where the value exceeds it.

Thresholds and categories come from the training split only, so nothing of the test split
leaks into the encoding; they are stored in the encoded file. Without a test split one is
made: stratified, 20 %, drawn by numpy's PCG64 from `split_seed` (stored with the data set).

The API runs this in a thread on a temporary file; an npz is read member by member with each
member's size checked against what is left of `limit` before it is read (a decompression
bomb stops at its header, not after filling memory).
"""

from __future__ import annotations

import csv
import math
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.catalog import ImageShape
from trainer.data.encoded import write_encoded
from trainer.data.errors import BadData

SPLITS = ("train", "valid", "test")
MEMBERS = tuple(f"{axis}_{split}" for split in SPLITS for axis in ("x", "y"))
METHODS = ("quantile", "uniform")
DEFAULT_BITS = 8
MAX_BITS = 255
TEST_FRACTION = 0.2
MAX_CLASSES = 1000  # the most a network's GroupSum takes (trainer.options `grouping`)
# The zip methods Python reads: stored, deflated, bzip2, lzma.
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# Bytes of temporaries at once (a block of columns as floats, a chunk of rows' bits): an
# upload's arrays are memory-mapped, so encoding one of any size needs about this much.
WORK_BYTES = 16 << 20
MAX_CSV_BYTES = 256 << 20
MAX_INPUTS = 1 << 22  # input bits per sample: a network's first layer must address them
MAX_ONEHOT = 1 << 28  # a CSV's one-hot bits in all (rows x categories: bytes while encoding)
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"


@dataclass(frozen=True)
class EncodeOptions:
    """How an upload becomes bits; part of a data set's identity (the same bytes encoded
    otherwise are another data set)."""

    bits: int = DEFAULT_BITS
    method: str = "quantile"
    label_column: str | None = None  # CSV only; default: a column named `label`
    categorical: tuple[str, ...] = ()  # CSV only
    split_seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "method": self.method,
            "labelColumn": self.label_column,
            "categorical": list(self.categorical),
            "splitSeed": self.split_seed,
        }


@dataclass
class Summary:
    """What the record of a data set says about it (service/datasets/record.py)."""

    format: str
    classes: int
    inputs: int
    features: int
    train: int
    valid: int
    test: int
    labels: list[str]
    binary: int = 0
    thermometer: int = 0
    categorical: dict[str, list[str]] = field(default_factory=dict)
    test_made: bool = False
    image: ImageShape | None = None

    def encoding(self, options: EncodeOptions) -> dict[str, Any]:
        return {
            **options.to_json(),
            "format": self.format,
            "features": self.features,
            "binaryFeatures": self.binary,
            "thermometerFeatures": self.thermometer,
            "categories": self.categorical,
            "labels": self.labels,
            "testSplit": "made (stratified, 20 %, splitSeed)" if self.test_made else "given",
        }


def sniff(path: Path) -> str:
    """`npz` for a zip archive, else `csv`."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return "npz" if head in (_ZIP_MAGIC, _EMPTY_ZIP) else "csv"


def encode_file(source: Path, target: Path, options: EncodeOptions, limit: int) -> Summary:
    """Read `source` (npz or CSV), validate it, write the encoded file to `target`."""
    _check_options(options)
    kind = sniff(source)
    if kind == "csv":
        if source.stat().st_size > MAX_CSV_BYTES:
            raise BadData(
                f"a CSV is read whole into memory, so at most {MAX_CSV_BYTES >> 20} MiB; "
                "upload a larger data set as an npz",
                413,
            )
        return _encode_csv(source, options, target)
    if options.label_column is not None or options.categorical:
        raise BadData("labelColumn and categorical are for CSV files; this is an npz")
    work = target.with_name(target.name + ".members")
    work.mkdir()
    try:
        splits = read_npz(source, limit, work)
        return _encode_arrays(splits, options, target, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_options(options: EncodeOptions) -> None:
    if not 1 <= options.bits <= MAX_BITS:
        raise BadData(f"bits must be 1 to {MAX_BITS}, got {options.bits}")
    if options.method not in METHODS:
        raise BadData(f"thresholds must be one of {', '.join(METHODS)}, got {options.method!r}")


# -- npz -----------------------------------------------------------------------------------


def read_npz(path: Path, limit: int, work: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz, memory-mapped from `.npy` files extracted into `work`; each
    member is extracted only after its header says it fits what is left of `limit` (the sum
    of all members' sizes), and never more than its header says."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadData(f"not an npz file (not a zip archive: {exc})") from None
    out: dict[str, np.ndarray] = {}
    budget = limit
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if name not in MEMBERS:
                raise BadData(
                    f"unexpected member {info.filename!r}; an npz data set holds "
                    f"{', '.join(MEMBERS)} (x_train and y_train required)"
                )
            if info.file_size > budget:
                raise BadData(
                    f"member {info.filename} expands to {info.file_size} bytes: past the "
                    f"upload limit of {limit} bytes",
                    413,
                )
            if info.flag_bits & 0x1 or info.compress_type not in _ZIP_METHODS:
                raise BadData(
                    f"member {info.filename} is encrypted or compressed in a way npz files "
                    "are not (save it with numpy.savez or savez_compressed)"
                )
            try:
                with archive.open(info) as fh:
                    array, nbytes = _read_npy(fh, budget, info.filename, limit, work / name)
            except BadData:
                raise
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError,
                    NotImplementedError) as exc:  # fmt: skip
                raise BadData(
                    f"member {info.filename} is not a readable .npy array: {exc}"
                ) from None
            budget -= nbytes
            out[name] = array
    for required in ("x_train", "y_train"):
        if required not in out:
            raise BadData(
                f"the npz has no {required} (members: {', '.join(sorted(out)) or 'none'})"
            )
    for split in ("valid", "test"):
        if (f"x_{split}" in out) != (f"y_{split}" in out):
            raise BadData(f"x_{split} and y_{split} come together: the npz has only one of them")
    return out


def _read_npy(fh: Any, budget: int, name: str, limit: int, out: Path) -> tuple[np.ndarray, int]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    if dtype.hasobject:
        raise BadData(
            f"{name} is an object array (rows of unequal length, or Python objects): "
            "store equal-length rows of numbers"
        )
    if dtype.kind not in "biuf":
        raise BadData(f"{name} holds {dtype} values; numbers (bool, int, float) only")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > budget:
        raise BadData(f"{name} holds {nbytes} bytes: past the upload limit of {limit} bytes", 413)
    if count == 0:
        return np.zeros(shape, dtype=dtype), 0
    path = out.with_suffix(".npy")
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape
    }  # fmt: skip
    copied = 0
    with open(path, "wb") as dst:
        np.lib.format.write_array_header_2_0(dst, header)
        while copied < nbytes and (chunk := fh.read(min(1 << 20, nbytes - copied))):
            dst.write(chunk)
            copied += len(chunk)
    if copied != nbytes:
        raise BadData(f"{name} is truncated: {copied} of {nbytes} bytes")
    return np.load(path, mmap_mode="r", allow_pickle=False), nbytes


@dataclass(frozen=True)
class Rows:
    """A split's rows: an array (memory-mapped for an npz) and which of its rows belong to
    the split (None: all). Read a block of columns or a chunk of rows at a time, never
    copied whole."""

    x: np.ndarray
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x) if self.index is None else len(self.index)

    @property
    def features(self) -> int:
        return int(self.x.shape[1])

    def columns(self, start: int, stop: int) -> np.ndarray:
        block = self.x[:, start:stop]
        return np.asarray(block if self.index is None else block[self.index])

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.index is None:
            return np.asarray(self.x[start:stop])
        return np.asarray(self.x[self.index[start:stop]])

    def take(self, index: np.ndarray) -> Rows:
        return Rows(self.x, index if self.index is None else self.index[index])


def _column_block(rows: int) -> int:
    """Columns per block so that one block as float64 fits WORK_BYTES."""
    return max(1, WORK_BYTES // (8 * max(1, rows)))


def _encode_arrays(
    arrays: dict[str, np.ndarray], options: EncodeOptions, target: Path, work: Path
) -> Summary:
    xs: dict[str, Rows] = {}
    ys: dict[str, np.ndarray] = {}
    samples: dict[str, tuple[int, ...]] = {}
    for split in SPLITS:
        if f"x_{split}" not in arrays:
            continue
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if not 2 <= x.ndim <= 4:
            raise BadData(
                f"x_{split} must be (samples, features), or an image (samples, height, width) "
                f"or (samples, height, width, channels); got shape {x.shape}"
            )
        samples[split] = tuple(int(d) for d in x.shape[1:])
        if y.ndim != 1:
            raise BadData(f"y_{split} must be one label per sample, got shape {y.shape}")
        if len(x) != len(y):
            raise BadData(f"x_{split} has {len(x)} rows and y_{split} {len(y)} labels")
        if len(x) == 0:
            raise BadData(f"x_{split} has no rows")
        rows = Rows(x.reshape(len(x), -1))
        _check_finite(rows, f"x_{split}")
        xs[split], ys[split] = rows, _integer_labels(np.asarray(y), f"y_{split}")
    widths = {split: x.features for split, x in xs.items()}
    if len(set(widths.values())) != 1:
        raise BadData(f"the splits have different numbers of features: {widths}")
    if len(set(samples.values())) != 1:
        raise BadData(f"the splits' samples have different shapes: {samples}")
    labels = np.unique(ys["train"])
    names = [str(int(v)) for v in labels]
    mapped = {split: _map_labels(y, labels, split) for split, y in ys.items()}
    image = samples["train"] if len(samples["train"]) > 1 else None
    return _finish(xs, mapped, names, {}, options, target, "npz", image=image)


def _check_finite(x: Rows, name: str) -> None:
    if x.x.dtype.kind != "f":
        return
    step = _row_chunk(x.features * (x.x.dtype.itemsize + 1))
    for start in range(0, len(x), step):
        bad = ~np.isfinite(x.rows(start, start + step))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise BadData(
                f"{name} has NaN or infinite values (first at row {start + row}, "
                f"column {col}); fill or drop them before uploading"
            )


def _row_chunk(width: int) -> int:
    """Rows per chunk so that a chunk's temporaries (width bytes a row) fit WORK_BYTES."""
    return max(1, WORK_BYTES // max(1, width))


def _integer_labels(y: np.ndarray, name: str) -> np.ndarray:
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if not np.isfinite(y).all() or not (y == np.round(y)).all():
        bad = y[~np.isfinite(y) | (y != np.round(y))][0].item()
        raise BadData(f"{name} holds labels that are not integers (e.g. {bad!r})")
    if len(y) and (np.abs(y) > 2**53).any():  # past exact integers in float64: would merge
        bad = y[np.abs(y) > 2**53][0].item()
        raise BadData(f"{name} holds labels too large to be told apart as integers ({bad!r})")
    return y.astype(np.int64)


def _map_labels(y: np.ndarray, labels: np.ndarray, split: str) -> np.ndarray:
    """Labels as class indices 0..C-1 in sorted order of the training labels."""
    index = np.searchsorted(labels, y)
    index = np.clip(index, 0, len(labels) - 1)
    unseen = labels[index] != y
    if unseen.any():
        raise BadData(
            f"the {split} split has label {y[unseen][0].item()!r}, which the training split "
            "does not"
        )
    return index.astype(np.int64)


# -- CSV -----------------------------------------------------------------------------------


def _rows(path: Path) -> Iterator[list[str]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:  # a BOM is no header
            yield from csv.reader(fh)
    except UnicodeDecodeError as exc:
        raise BadData(f"not an npz file and not a UTF-8 CSV ({exc})") from None
    except csv.Error as exc:
        raise BadData(f"not a readable CSV: {exc}") from None


def _encode_csv(path: Path, options: EncodeOptions, target: Path) -> Summary:
    rows = _rows(path)
    header = [h.strip() for h in next(rows, [])]
    if not header or not any(header):
        raise BadData("the CSV is empty: a header row naming the columns comes first")
    if len(set(header)) != len(header):
        raise BadData("the CSV header names a column twice")
    label = options.label_column or "label"
    if label not in header:
        raise BadData(
            f"the CSV has no label column {label!r} (columns: {', '.join(header[:20])}); "
            "name it with labelColumn"
        )
    unknown = [c for c in options.categorical if c not in header or c == label]
    if unknown:
        raise BadData(f"categorical names columns the CSV does not have as features: {unknown}")
    columns: list[list[str]] = [[] for _ in header]
    for number, row in enumerate(rows, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise BadData(
                f"CSV line {number} has {len(row)} fields, the header {len(header)}: rows of "
                "unequal length"
            )
        for values, value in zip(columns, row, strict=True):
            values.append(value.strip())
    li = header.index(label)
    y_raw = columns[li]
    if not y_raw:
        raise BadData("the CSV has a header and no rows")
    features = [(h, c) for i, (h, c) in enumerate(zip(header, columns, strict=True)) if i != li]
    if not features:
        raise BadData("the CSV has a label column and no feature columns")
    numeric: list[tuple[str, np.ndarray]] = []
    categorical: list[tuple[str, list[str]]] = []
    for name, values in features:
        parsed = None if name in options.categorical else _floats(values)
        if parsed is None:
            categorical.append((name, values))
            continue
        if not np.isfinite(parsed).all():
            line = int(np.argmax(~np.isfinite(parsed))) + 2
            raise BadData(
                f"column {name!r} has NaN or infinite values (first on line {line}); fill or "
                "drop them, or list the column as categorical"
            )
        numeric.append((name, parsed))
    n = len(y_raw)
    if len(set(y_raw)) > MAX_CLASSES:  # before any work that grows with the classes
        raise BadData(f"the label column has {len(set(y_raw))} classes; at most {MAX_CLASSES}")
    test = _stratified_test(_class_index(y_raw), options.split_seed)
    train = np.setdiff1d(np.arange(n), test)
    split_rows = {"train": train, "test": test}
    label_names = sorted(set(y_raw[i] for i in train))
    index = {v: k for k, v in enumerate(label_names)}
    y_all = np.asarray([index.get(v, -1) for v in y_raw])
    x_num = np.stack([v for _, v in numeric], axis=1) if numeric else np.zeros((n, 0), np.float64)
    onehot_parts: list[np.ndarray] = []
    cats = {name: sorted({values[i] for i in train}) for name, values in categorical}
    width = sum(len(seen) for seen in cats.values())
    if width > MAX_INPUTS or n * width > MAX_ONEHOT:  # before one-hot matrices: rows x width
        big = max(cats, key=lambda c: len(cats[c]))
        raise BadData(
            f"the categorical columns make {width} input bits a row ({big!r} alone has "
            f"{len(cats[big])} values), {n * width} for the file: at most {MAX_INPUTS} a row "
            f"and {MAX_ONEHOT} in all. Is {big!r} an id? Leave such columns out"
        )
    for name, values in categorical:
        seen = cats[name]
        lookup = {v: k for k, v in enumerate(seen)}
        codes = np.asarray([lookup.get(v, -1) for v in values])
        onehot_parts.append((codes[:, None] == np.arange(len(seen))[None, :]).astype(np.uint8))
    onehot = np.concatenate(onehot_parts, axis=1) if onehot_parts else np.zeros((n, 0), np.uint8)
    xs = {s: Rows(x_num, r) for s, r in split_rows.items()}
    extra = {s: onehot[r] for s, r in split_rows.items()}
    ys = {s: y_all[r] for s, r in split_rows.items()}
    return _finish(xs, ys, label_names, cats, options, target, "csv", extra=extra, made=True)


def _floats(values: Sequence[str]) -> np.ndarray | None:
    """The column as numbers, or None where some value is not one (a categorical column)."""
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return None


def _class_index(labels: Sequence[str]) -> np.ndarray:
    lookup = {v: k for k, v in enumerate(sorted(set(labels)))}
    return np.asarray([lookup[v] for v in labels], dtype=np.int64)


# -- the shared part -----------------------------------------------------------------------


def _stratified_test(y: np.ndarray, seed: int) -> np.ndarray:
    """Row indices of a test split: TEST_FRACTION of each class (at least one row of a class
    with two or more), drawn by PCG64 from `seed`: the same rows on every machine."""
    rng = np.random.Generator(np.random.PCG64(seed))
    picked = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        take = round(len(rows) * TEST_FRACTION)
        if len(rows) >= 2:
            take = min(max(take, 1), len(rows) - 1)
        else:
            take = 0
        picked.append(rng.permutation(rows)[:take])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _finish(
    xs: dict[str, Rows],
    ys: dict[str, np.ndarray],
    labels: list[str],
    categories: dict[str, list[str]],
    options: EncodeOptions,
    target: Path,
    fmt: str,
    *,
    extra: dict[str, np.ndarray] | None = None,
    made: bool = False,
    image: tuple[int, ...] | None = None,
) -> Summary:
    """Split, encode, write. `image`: the samples' (height, width[, channels]) where they are
    images; then every value gets the same number of bits (one where all of the training
    values are 0 or 1, else `bits`), so the bits keep the image's layout with the
    thresholds as channels (trainer.data.catalog.ImageShape)."""
    classes = len(labels)
    if classes < 2:
        raise BadData(f"the training labels have a single class ({labels[0]}): nothing to learn")
    if classes > MAX_CLASSES:
        raise BadData(f"the training labels have {classes} classes; at most {MAX_CLASSES}")
    if "test" not in xs:
        test = _stratified_test(ys["train"], options.split_seed)
        train = np.setdiff1d(np.arange(len(ys["train"])), test)
        xs = {**xs, "test": xs["train"].take(test), "train": xs["train"].take(train)}
        ys = {**ys, "test": ys["train"][test], "train": ys["train"][train]}
        made = True
    if len(ys["test"]) == 0 or len(ys["train"]) == 0:
        raise BadData("too few rows to split off a test set: give x_test and y_test")
    features = xs["train"].features + (0 if extra is None else extra["train"].shape[1])
    if features > MAX_INPUTS:  # before thresholds and bits that grow with the features
        raise BadData(f"the data set has {features} features; at most {MAX_INPUTS} input bits")
    binary_columns = _binary_columns(xs["train"])
    if image is not None and not binary_columns.all():
        binary_columns[:] = False  # one width for every value: thermometer them all
    binary = int(binary_columns.sum())
    thresholds = _thresholds(xs["train"], binary_columns, options)
    mask = ~np.isnan(thresholds)
    cat_width = 0 if extra is None else extra["train"].shape[1]
    inputs = int(mask.sum()) + cat_width
    if inputs == 0:
        raise BadData("the data set has no features")
    if inputs > MAX_INPUTS:
        raise BadData(f"the encoding makes {inputs} input bits per sample; at most {MAX_INPUTS}")
    shape = None
    if image is not None:
        per_value = 1 if binary_columns.all() else options.bits
        height, width, channels = (*image, 1)[:3]
        shape = ImageShape(height, width, channels * per_value)
        if shape.inputs != inputs:  # a quantile threshold is never NaN: cannot happen
            raise BadData(f"the image {image} encodes to {inputs} bits, not {shape.inputs}")
    bits = {
        split: _encode(
            x,
            thresholds,
            mask,
            None if extra is None else extra[split],
            target.with_name(f"{target.name}.{split}.bits"),
        )
        for split, x in xs.items()
    }
    try:
        write_encoded(
            target, bits, ys, inputs=inputs, classes=classes, thresholds=thresholds, image=shape
        )
    finally:
        for split in bits:
            target.with_name(f"{target.name}.{split}.bits").unlink(missing_ok=True)
    features = xs["train"].features
    return Summary(
        format=fmt,
        classes=classes,
        inputs=inputs,
        features=features + len(categories),
        train=len(ys["train"]),
        valid=len(ys.get("valid", ())),
        test=len(ys["test"]),
        labels=labels,
        binary=binary,
        thermometer=features - binary,
        categorical=categories,
        test_made=made,
        image=shape,
    )


def _binary_columns(x: Rows) -> np.ndarray:
    out = np.zeros(x.features, dtype=bool)
    step = _column_block(len(x))
    for start in range(0, x.features, step):
        block = x.columns(start, start + step)
        out[start : start + step] = ((block == 0) | (block == 1)).all(axis=0)
    return out


def _thresholds(x: Rows, binary: np.ndarray, options: EncodeOptions) -> np.ndarray:
    """(features, bits) thresholds from the training rows; a 0/1 feature gets one threshold
    (0.5) and NaN for the rest, so it stays one bit."""
    k = options.bits
    out = np.full((x.features, k), np.nan)
    q = np.arange(1, k + 1) / (k + 1)
    step = max(1, _column_block(len(x)) // 2)  # np.quantile sorts a copy of the block
    for start in range(0, x.features, step):
        block = x.columns(start, start + step).astype(np.float64)
        if options.method == "quantile":
            th = np.quantile(block, q, axis=0).T
        else:
            lo, hi = block.min(axis=0), block.max(axis=0)
            th = lo[:, None] + (hi - lo)[:, None] * q[None, :]
        out[start : start + step] = th
    out[binary] = np.nan
    out[binary, 0] = 0.5
    return out


def _encode(
    x: Rows, thresholds: np.ndarray, mask: np.ndarray, extra: np.ndarray | None, spill: Path
) -> np.ndarray:
    """(n, inputs) bits, packed along each row (np.packbits): thermometer bits feature-major,
    then the one-hot columns. Written to a memory-mapped file at `spill`, chunk by chunk."""
    n = len(x)
    inputs = int(mask.sum()) + (0 if extra is None else extra.shape[1])
    packed = np.lib.format.open_memmap(spill, mode="w+", dtype=np.uint8,
                                       shape=(n, (inputs + 7) // 8))  # fmt: skip
    th = np.where(mask, thresholds, np.inf)
    # A chunk's rows as read, their comparison with every threshold, the bits kept.
    width = x.features * x.x.dtype.itemsize + 2 * thresholds.size
    step = _row_chunk(width + (0 if extra is None else 2 * extra.shape[1]))
    for start in range(0, n, step):
        rows = x.rows(start, start + step)
        bits = (rows[:, :, None] > th[None, :, :])[:, mask]
        if extra is not None:
            bits = np.concatenate([bits, extra[start : start + step].astype(bool)], axis=1)
        packed[start : start + step] = np.packbits(bits, axis=1)
    packed.flush()
    return packed

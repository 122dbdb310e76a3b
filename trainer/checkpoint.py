"""Checkpoints: what one holds, its file, writing it safely, and validating and loading it
(docs/trainer.md, "Checkpoints and resume").

A checkpoint holds everything a run needs to go on exactly as if it had not stopped: the
model's parameters and buffers, Adam's state, how far training got (completed epochs and,
mid-epoch, the steps done in the next one, that epoch's data order and its partial sums),
the state of every random generator (Python's, numpy's, torch's CPU and CUDA ones, and the
generator of the data order), the threads the run computed with, and the training options
with their `hyperparameters_hash`.

File format, version 1:

    b"gatequeue-checkpoint 1\\n"   the magic and the format version
    header                        one line of JSON, then b"\\n": epoch, step,
                                  hyperparameters, hyperparameters_hash, threads, device, ...
    payload                       torch.save of the state (a zip of tensors), loaded with
                                  weights_only=True, so a planted file cannot run code
    trailer                       b"\\ngatequeue-checkpoint-end <payload bytes, 20 digits>
                                  <sha256 hex>\\n": the SHA-256 of every byte before it

The header is plain JSON, so a torch-free reader (`inspect`) can validate a file and say
what it holds. Checkpoints are written through a temporary file in the same folder that is
fsynced, renamed over the target and the folder fsynced, so a crash leaves the old file or
the new one, never half of one; the checksum catches what the disk or a copy damaged. The
folder keeps the newest two.

No torch or numpy at import: the worker and its tests read exit codes and headers here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import random
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from trainer import environment
from trainer.errors import BadCheckpoint, CheckpointedStop
from trainer.options import hyperparameters_hash

if TYPE_CHECKING:
    import torch

FORMAT = "gatequeue-checkpoint"
VERSION = 1
KEEP = 2
SUFFIX = ".gqckpt"
NAME = re.compile(r"^checkpoint-e(\d+)-s(\d+)" + re.escape(SUFFIX) + "$")
TEMP_PREFIX = ".checkpoint-"
TEMP_SUFFIX = ".tmp"
HEADER_MAX = 1 << 20
_MAGIC = f"{FORMAT} ".encode()
_END = b"\ngatequeue-checkpoint-end "
TRAILER_LEN = len(_END) + 20 + 1 + 64 + 1
_TRAILER = re.compile(re.escape(_END) + rb"(\d{20}) ([0-9a-f]{64})\n\Z")
_CHUNK = 1 << 20

__all__ = [
    "BadCheckpoint",
    "CheckpointedStop",
    "Header",
    "Kept",
    "Progress",
    "capture",
    "check_hyperparameters",
    "inspect",
    "load_payload",
    "restore",
    "write_checkpoint",
]


# -- what a run is at a checkpoint ----------------------------------------------------------


@dataclass
class Kept:
    """The best network so far by `val_acc_discrete` (docs/trainer.md, "Validation and the
    kept network"): its epoch (0: none yet), that value, its EPOCH metrics and a CPU copy
    of its parameters and buffers. A checkpoint carries it, so a resumed run keeps the same
    network as an uninterrupted one."""

    epoch: int = 0
    value: float = -1.0
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None


@dataclass
class Progress:
    """How far a run got. `epochs_done` = K; mid-epoch (`order` set) the run stopped after
    `step` steps of epoch K + 1, whose data order and partial sums are kept. `kept` and
    `metrics` (the last EPOCH line's) feed the SUMMARY and network.json; `train_s` is the
    training time up to the checkpoint, earlier processes included, so that total_s counts
    every attempt."""

    epochs_done: int = 0
    step: int = 0
    order: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    seen: int = 0
    kept: Kept = field(default_factory=Kept)
    metrics: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0

    @property
    def mid_epoch(self) -> bool:
        return self.order is not None


def capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    progress: Progress,
    device: torch.device,
) -> dict[str, Any]:
    """The payload of a checkpoint: tensors and plain values only (weights_only loads it).

    Reads the CUDA generator of `device` only when the run uses CUDA: touching it otherwise
    would create a CUDA context for nothing."""
    import numpy as np
    import torch

    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": {
                "kind": str(kind),
                "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "torch": torch.get_rng_state(),
            "cuda": cuda,
            "data_order": generator.get_state(),
        },
        "progress": {
            "epochs_done": progress.epochs_done,
            "step": progress.step,
            "order": None if progress.order is None else progress.order.cpu(),
            "loss_sum": None if progress.loss_sum is None else progress.loss_sum.cpu(),
            "correct": None if progress.correct is None else progress.correct.cpu(),
            "seen": progress.seen,
            "kept": {
                "epoch": progress.kept.epoch,
                "value": progress.kept.value,
                "metrics": dict(progress.kept.metrics),
                # The network at an epoch's end is the kept one when that epoch is: saved once.
                "state": None
                if progress.kept.epoch == progress.epochs_done and not progress.mid_epoch
                else progress.kept.state,
            },
            "metrics": dict(progress.metrics),
            "train_s": progress.train_s,
        },
    }


def restore(
    path: str | os.PathLike[str],
    payload: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> Progress:
    """Put `payload` back into the model, the optimizer and every generator; the progress.

    Call it last before training: building the model draws from torch's generator, which
    is then overwritten here. Raises BadCheckpoint if the payload does not fit."""
    import numpy as np
    import torch

    try:
        load_model_state(model, payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        rng = payload["rng"]
        state = rng["numpy"]
        np.random.set_state(
            (
                state["kind"],
                state["key"].numpy().astype(np.uint32),
                state["pos"],
                state["has_gauss"],
                state["gauss"],
            )
        )
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        generator.set_state(rng["data_order"])
        p = payload["progress"]
        kept = _restore_kept(p.get("kept"), int(p["epochs_done"]), model)
        return Progress(
            epochs_done=int(p["epochs_done"]),
            step=int(p["step"]),
            order=None if p["order"] is None else p["order"].to(device),
            loss_sum=None if p["loss_sum"] is None else p["loss_sum"].to(device),
            correct=None if p["correct"] is None else p["correct"].to(device),
            seen=int(p["seen"]),
            kept=kept,
            metrics={str(k): float(v) for k, v in p["metrics"].items()},
            train_s=float(p["train_s"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadCheckpoint(path, f"corrupt (its state lacks or mangles {exc})") from exc
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadCheckpoint(path, f"does not fit this network ({first})") from exc


def model_state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's parameters and buffers that later steps do not change."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_model_state(model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Load parameters and buffers, then the derived ones that are not saved."""
    import torch

    model.load_state_dict(state)
    # LogicLayer's int32 copies of the connections are derived, non-persistent buffers:
    # bring them in line with the loaded connections.
    for layer in getattr(model, "layers", ()):
        if hasattr(layer, "idx_a32"):
            layer.idx_a32.copy_(layer.idx_a.to(torch.int32))
            layer.idx_b32.copy_(layer.idx_b.to(torch.int32))
            layer._reverse = None


def _restore_kept(saved: Any, epochs_done: int, model: torch.nn.Module) -> Kept:
    """The kept network of a payload; a checkpoint from before `kept` existed keeps none
    yet (the next epoch becomes the kept one)."""
    if saved is None:
        return Kept()
    state = saved["state"]
    epoch = int(saved["epoch"])
    if state is None and epoch > 0:
        if epoch != epochs_done:
            raise KeyError("kept.state")
        state = model_state_copy(model)  # the loaded network is the kept one
    return Kept(
        epoch=epoch,
        value=float(saved["value"]),
        metrics={str(k): float(v) for k, v in saved["metrics"].items()},
        state=state,
    )


# -- the file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """What `inspect` read from a valid file; `fields` is the whole header."""

    path: Path
    epoch: int
    step: int
    hyperparameters: dict[str, Any]
    hyperparameters_hash: str
    payload_offset: int
    payload_bytes: int
    size: int
    fields: dict[str, Any]


class _HashingWriter:
    """A write-only file for torch.save that hashes and counts what passes through, so the
    payload streams to disk without a second copy in memory."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.count = 0
        self.error: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.sha.update(data)
        self.count += len(data)
        try:
            return self.out.write(data)
        except OSError as exc:
            self.error = exc  # torch.save turns it into a RuntimeError that names no cause
            raise

    def flush(self) -> None:
        self.out.flush()


class _Window(io.RawIOBase):
    """Bytes [start, start + size) of an open file as a file of their own: torch.load
    reads the payload in place, without copying it into memory first."""

    def __init__(self, f: io.BufferedReader, start: int, size: int) -> None:
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        if n == 0:
            return 0
        self.f.seek(self.start + self.pos)
        got = self.f.readinto(view[:n]) or 0
        self.pos += got
        return got


def file_name(epoch: int, step: int) -> str:
    return f"checkpoint-e{epoch:06d}-s{step:08d}{SUFFIX}"


def write_checkpoint(
    directory: Path, header: Mapping[str, Any], payload: Mapping[str, Any]
) -> tuple[Path, int]:
    """Write one checkpoint atomically into `directory` and keep the newest KEEP there.

    `header` must hold `epoch` and `step` (and should hold `hyperparameters` and their
    `hyperparameters_hash`). Returns (absolute path, size in bytes). Raises OSError when
    the disk refuses (full, say), and whatever torch.save raises for an unsaveable payload;
    either way the folder is left as it was."""
    import torch

    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / file_name(int(header["epoch"]), int(header["step"]))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb", buffering=_CHUNK) as raw:
            out = _HashingWriter(raw)
            out.write(f"{FORMAT} {VERSION}\n".encode())
            out.write(json.dumps(dict(header), separators=(",", ":")).encode() + b"\n")
            start = out.count
            try:
                torch.save(dict(payload), out)  # type: ignore[arg-type]
            except RuntimeError:
                if out.error is not None:
                    raise out.error from None
                raise
            payload_bytes = out.count - start
            raw.write(_END + f"{payload_bytes:020d} {out.sha.hexdigest()}\n".encode())
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    prune(directory, newest=target)
    return target, target.stat().st_size


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable: a directory's entries reach the disk with its own fsync."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(directory: Path, *, newest: Path, keep: int = KEEP) -> list[Path]:
    """Delete all but `newest` and the most recently written others, `keep` in all.

    By write time, not by name: after a resume from an older checkpoint (the newest was
    damaged, say), the files this run writes are the ones to keep, whatever their epoch."""
    others = []
    for entry in directory.iterdir():
        if NAME.match(entry.name) and entry != newest:
            try:
                others.append((entry.stat().st_mtime_ns, entry.name, entry))
            except FileNotFoundError:
                continue
    others.sort(reverse=True)
    removed = []
    for _, _, entry in others[keep - 1 :]:
        try:
            entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Temporary files of writes that a killed process never finished."""
    removed = []
    if directory.is_dir():
        for entry in directory.iterdir():
            if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
                try:
                    entry.unlink()
                    removed.append(entry)
                except FileNotFoundError:
                    pass
    return removed


def inspect(path: str | os.PathLike[str]) -> Header:
    """Validate a file without torch: the magic, the format version, the header, the
    length and the checksum. Raises BadCheckpoint with the reason."""
    p = Path(path)
    try:
        f = open(p, "rb")
    except OSError as exc:
        raise BadCheckpoint(path, f"cannot read it ({exc.strerror or exc})") from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise BadCheckpoint(path, "truncated (the file is empty)")
        first = f.readline(64)
        if not first.startswith(_MAGIC):
            if _MAGIC.startswith(first):
                raise BadCheckpoint(path, f"truncated (after {size} bytes)")
            hint = " (a zip file: a bare torch.save?)" if first.startswith(b"PK") else ""
            raise BadCheckpoint(path, f"not a gatequeue checkpoint{hint}")
        if not first.endswith(b"\n"):
            if len(first) == size:
                raise BadCheckpoint(path, f"truncated (after {size} bytes)")
            raise BadCheckpoint(path, "not a gatequeue checkpoint (bad first line)")
        version_text = first[len(_MAGIC) : -1]
        if not version_text.isdigit():
            raise BadCheckpoint(path, "not a gatequeue checkpoint (no format version)")
        version = int(version_text)
        if version != VERSION:
            raise BadCheckpoint(
                path, f"format version {version} unsupported (this trainer reads {VERSION})"
            )
        line = f.readline(HEADER_MAX)
        if not line.endswith(b"\n"):
            if f.tell() == size:
                raise BadCheckpoint(path, f"truncated (after {size} bytes, in the header)")
            raise BadCheckpoint(path, "corrupt (the header has no end)")
        try:
            fields = json.loads(line)
            epoch, step = int(fields["epoch"]), int(fields["step"])
            hp = dict(fields["hyperparameters"])
            digest = str(fields["hyperparameters_hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadCheckpoint(path, f"corrupt (unreadable header: {exc})") from exc
        offset = f.tell()
        if size < offset + TRAILER_LEN:
            raise BadCheckpoint(path, f"truncated (after {size} bytes, before its payload)")
        f.seek(size - TRAILER_LEN)
        trailer = _TRAILER.match(f.read(TRAILER_LEN))
        if trailer is None:
            raise BadCheckpoint(path, f"truncated (after {size} bytes: its end marker is gone)")
        payload_bytes = int(trailer.group(1))
        expected = offset + payload_bytes + TRAILER_LEN
        if expected != size:
            raise BadCheckpoint(
                path, f"corrupt (length mismatch: {size} bytes, its trailer says {expected})"
            )
        sha = hashlib.sha256()
        f.seek(0)
        left = size - TRAILER_LEN
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise BadCheckpoint(path, "truncated (it shrank while being read)")
            sha.update(chunk)
            left -= len(chunk)
        if sha.hexdigest() != trailer.group(2).decode():
            raise BadCheckpoint(path, "corrupt (checksum mismatch)")
    return Header(p, epoch, step, hp, digest, offset, payload_bytes, size, fields)


def check_hyperparameters(header: Header, hyperparameters: Mapping[str, Any]) -> None:
    """Refuse a checkpoint of other training options, naming each that differs."""
    if header.hyperparameters_hash == hyperparameters_hash(hyperparameters):
        return
    keys = sorted(set(header.hyperparameters) | set(hyperparameters))
    diffs = [
        f"{k}: {header.hyperparameters.get(k, '(unset)')!r} in the checkpoint, "
        f"{hyperparameters.get(k, '(unset)')!r} here"
        for k in keys
        if header.hyperparameters.get(k) != hyperparameters.get(k)
    ]
    raise BadCheckpoint(
        header.path,
        "written for other hyperparameters ("
        + ("; ".join(diffs) or "same values, another hash: another version of the options")
        + ")",
    )


def other_gpu(header: Header, gpu: str | None) -> str | None:
    """The GPU model the checkpoint was written on, where a resume on `gpu` (this run's,
    trainer.device.gpu_model) lands on another model: kernels and their float sums differ
    between GPU generations, so the run goes on, but not as the original would have. None
    when both are the same, or either is not known (a CPU run, an older checkpoint)."""
    saved = header.fields.get("gpu")
    if isinstance(saved, str) and gpu is not None and saved != gpu:
        return saved
    return None


def load_payload(header: Header) -> dict[str, Any]:
    """The payload of an inspected file (tensors on the CPU). Raises BadCheckpoint."""
    import pickle

    import torch

    try:
        with open(header.path, "rb") as f:
            window = io.BufferedReader(_Window(f, header.payload_offset, header.payload_bytes))
            payload = torch.load(window, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise BadCheckpoint(header.path, f"corrupt (unreadable payload: {exc})") from exc
    if not isinstance(payload, dict):
        raise BadCheckpoint(header.path, "corrupt (the payload is not a checkpoint's state)")
    return payload


def header_fields(
    *,
    epoch: int,
    step: int,
    hyperparameters: Mapping[str, Any],
    device: str,
    backend: str,
    threads: int,
    steps_per_epoch: int,
) -> dict[str, Any]:
    """A header: what a reader needs without loading the payload, and where it came from.
    `gpu`: the GPU's model on CUDA (None elsewhere): "cuda" alone does not say whether a
    resume lands on the same kind of card (other_gpu)."""
    import torch

    from trainer.device import gpu_model

    return {
        "epoch": epoch,
        "step": step,
        "steps_per_epoch": steps_per_epoch,
        "hyperparameters": dict(hyperparameters),
        "hyperparameters_hash": hyperparameters_hash(hyperparameters),
        "device": device,
        "gpu": gpu_model(device),
        "backend": backend,
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "job_id": environment.job_identity()[0],
        "attempt": environment.job_identity()[1],
    }

"""The checkpoint file: writing it safely, and validating and loading it (docs/trainer.md,
"Checkpoints and resume"). What goes into its payload, and back into a run, is
trainer/run_state.py's.

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

No torch or numpy at import: the worker and its tests read headers here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from trainer import environment
from trainer.errors import BadCheckpoint, CheckpointedStop
from trainer.options import hyperparameters_hash

if TYPE_CHECKING:
    pass

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
    "check_hyperparameters",
    "inspect",
    "load_payload",
    "write_checkpoint",
]


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

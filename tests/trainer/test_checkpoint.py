"""Checkpoint files (trainer.checkpoint): the format round trip, every refusal with its
reason, atomic writes, keeping the newest two, stop requests, and the trainer-only flags.

In process and fast; tests/trainer/test_checkpoint_resume.py runs the trainer itself.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import run_without_torch

from trainer import checkpoint, protocol, supervision
from trainer.cli import build_parser, main, validate
from trainer.errors import BadCheckpoint, CheckpointedStop
from trainer.loop import hyperparameters, run
from trainer.options import hyperparameters_hash
from trainer.supervision import StopRequest

ROOT = Path(__file__).resolve().parents[2]
HP: dict[str, Any] = {"gateOptimizer": "softmax", "gates": 40, "epochs": 3, "seed": 1}


def header(epoch: int = 2, step: int = 0, hp: dict[str, Any] | None = None) -> dict[str, Any]:
    hp = HP if hp is None else hp
    return {
        "epoch": epoch,
        "step": step,
        "hyperparameters": hp,
        "hyperparameters_hash": hyperparameters_hash(hp),
        "threads": 1,
    }


def payload(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(64, 16, generator=g), "idx": torch.arange(64)},
        "rng": {"torch": torch.get_rng_state(), "python": (3, (1, 2, 3), None)},
        "progress": {"epochs_done": 2, "metrics": {"test_acc": 0.5}, "order": None},
    }


class Unsaveable:
    """Fails halfway through torch.save, after the header is written."""

    def __reduce__(self) -> Any:
        raise RuntimeError("cannot be saved")


def write(tmp_path: Path, epoch: int = 2, step: int = 0) -> Path:
    path, size = checkpoint.write_checkpoint(tmp_path, header(epoch, step), payload(epoch))
    assert size == path.stat().st_size
    return path


def reason(path: Path) -> str:
    with pytest.raises(BadCheckpoint) as info:
        checkpoint.inspect(path)
    assert str(info.value).startswith(f"cannot resume from {path}: ")
    return info.value.reason


def test_a_written_checkpoint_reads_back_with_its_header_and_tensors(tmp_path: Path) -> None:
    path = write(tmp_path, epoch=3, step=7)
    assert path == tmp_path.absolute() / "checkpoint-e000003-s00000007.gqckpt"
    assert path.read_bytes().startswith(b"gatequeue-checkpoint 1\n{")
    head = checkpoint.inspect(path)
    assert (head.epoch, head.step, head.hyperparameters) == (3, 7, HP)
    assert head.hyperparameters_hash == hyperparameters_hash(HP)
    checkpoint.check_hyperparameters(head, dict(HP))  # the same options: accepted
    loaded = checkpoint.load_payload(head)
    expected = payload(3)
    assert torch.equal(loaded["model"]["w"], expected["model"]["w"])
    assert torch.equal(loaded["rng"]["torch"], expected["rng"]["torch"])
    assert loaded["rng"]["python"] == (3, (1, 2, 3), None)
    assert loaded["progress"]["metrics"] == {"test_acc": 0.5}


@pytest.mark.parametrize("keep", [0, 10, 23, 100, 300, -1])
def test_a_file_cut_short_anywhere_is_refused_as_truncated(tmp_path: Path, keep: int) -> None:
    data = write(tmp_path).read_bytes()
    cut = tmp_path / "cut.gqckpt"
    cut.write_bytes(data[:keep] if keep >= 0 else data[: len(data) // 2])
    assert reason(cut).startswith("truncated"), reason(cut)
    cut.write_bytes(data[:-1])
    assert reason(cut).startswith("truncated")


def test_a_changed_byte_is_a_checksum_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path)
    data = bytearray(path.read_bytes())
    head = checkpoint.inspect(path)
    for offset in (head.payload_offset + head.payload_bytes // 2, data.index(b"softmax")):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01  # "softmax" -> "roftmax": still valid JSON
        path.write_bytes(bytes(damaged))
        assert reason(path) == "corrupt (checksum mismatch)"
    path.write_bytes(bytes(data) + b"x")
    assert reason(path).startswith("truncated") or reason(path).startswith("corrupt")


def test_other_training_options_are_refused_naming_each_difference(tmp_path: Path) -> None:
    head = checkpoint.inspect(write(tmp_path))
    with pytest.raises(BadCheckpoint) as info:
        checkpoint.check_hyperparameters(head, {**HP, "epochs": 5, "gates": 80})
    assert info.value.reason == (
        "written for other hyperparameters (epochs: 3 in the checkpoint, 5 here; "
        "gates: 40 in the checkpoint, 80 here)"
    )


def test_files_that_are_no_checkpoint_are_refused(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save({"w": torch.zeros(3)}, bare)
    assert reason(bare) == "not a gatequeue checkpoint (a zip file: a bare torch.save?)"
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert reason(text) == "not a gatequeue checkpoint"
    assert reason(tmp_path / "missing.gqckpt").startswith("cannot read it")


def test_another_format_version_is_refused_before_its_checksum(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_bytes(
        path.read_bytes().replace(b"gatequeue-checkpoint 1\n", b"gatequeue-checkpoint 2\n", 1)
    )
    assert reason(path) == "format version 2 unsupported (this trainer reads 1)"


def test_the_folder_keeps_the_two_written_last(tmp_path: Path) -> None:
    for epoch in (1, 2, 3, 4):
        write(tmp_path, epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-e000003-s00000000.gqckpt",
        "checkpoint-e000004-s00000000.gqckpt",
    ]
    # Resumed from an older checkpoint: the newer-numbered ones are stale, the ones written
    # now are kept, whatever their epoch.
    for p in tmp_path.iterdir():
        os.utime(p, ns=(10**9, 10**9))
    write(tmp_path, 2)
    write(tmp_path, 3, step=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-e000002-s00000000.gqckpt",
        "checkpoint-e000003-s00000005.gqckpt",
    ]


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    good = write(tmp_path, 1)
    before = good.read_bytes()
    with pytest.raises(RuntimeError, match="cannot be saved"):
        checkpoint.write_checkpoint(
            tmp_path, header(2), {"w": torch.zeros(1000), "bad": Unsaveable()}
        )
    assert [p.name for p in tmp_path.iterdir()] == [good.name]
    assert good.read_bytes() == before
    leftover = tmp_path / ".checkpoint-abc.tmp"
    leftover.write_bytes(b"half a file")
    assert checkpoint.remove_stale_temporaries(tmp_path) == [leftover]
    assert not leftover.exists()


def test_a_full_disk_is_an_oserror_and_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = write(tmp_path, 1)
    real_fdopen = os.fdopen

    class Full:
        """The temporary file, refusing writes after 4 KiB: past the header, in torch.save."""

        def __init__(self, f: Any) -> None:
            self.f, self.written = f, 0

        def write(self, data: bytes) -> int:
            if self.written + len(data) > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return int(self.f.write(data))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
    with pytest.raises(OSError) as info:
        checkpoint.write_checkpoint(tmp_path, header(2), payload(2))
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == [good.name]


def test_stop_requests_come_from_the_worker_line_and_from_sigusr1() -> None:
    sup = supervision.Supervision(deadline=float("inf"))
    stop = StopRequest(sup)
    sup.heard("hello there")
    assert not stop.requested() and stop.ignored == ["hello there"]
    sup.heard(protocol.CheckpointAndStop().format() + "\n")
    assert stop.requested() and stop.source == "stdin"

    by_signal = StopRequest()
    before = signal.getsignal(signal.SIGUSR1)
    undo = by_signal.install_signal()
    try:
        assert not by_signal.requested()
        signal.raise_signal(signal.SIGUSR1)
        assert by_signal.requested() and by_signal.source == "SIGUSR1"
    finally:
        undo()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_checkpoint_flags_are_not_training_options(tmp_path: Path) -> None:
    parser = build_parser()
    plain = parser.parse_args(["--output-dir", str(tmp_path)])
    flagged = parser.parse_args(
        [
            "--output-dir",
            str(tmp_path),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            "--checkpoint-interval-s",
            "0",
            "--resume-from",
            str(tmp_path / "x.gqckpt"),
        ]
    )
    validate(parser, plain)
    validate(parser, flagged)
    assert plain.checkpoint_dir is None and plain.resume_from is None
    assert plain.checkpoint_interval_s == 300.0 and flagged.checkpoint_interval_s == 0.0
    assert hyperparameters(plain) == hyperparameters(flagged)
    assert hyperparameters_hash(hyperparameters(plain)) == hyperparameters_hash(
        hyperparameters(flagged)
    )


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf"])
def test_a_bad_interval_exits_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--checkpoint-interval-s", value])
    assert info.value.code == 2
    assert "--checkpoint-interval-s" in capsys.readouterr().err


def test_an_unusable_resume_file_exits_65_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.gqckpt"
    bad.write_bytes(b"gatequeue-checkpoint 1\n{")
    code = main(["--resume-from", str(bad), "--output-dir", str(tmp_path / "out")])
    assert code == protocol.EXIT_BAD_CHECKPOINT
    assert capsys.readouterr().err.strip() == (
        f"error: cannot resume from {bad}: truncated (after {bad.stat().st_size} bytes, "
        "in the header)"
    )
    assert not (tmp_path / "out").exists()  # refused before any work


def test_headers_are_read_without_torch(tmp_path: Path) -> None:
    """The worker may validate a checkpoint before it uploads or hands it to a trainer."""
    path = write(tmp_path, 4)
    run_without_torch(
        "from trainer import checkpoint\n"
        f"h = checkpoint.inspect({str(path)!r})\n"
        "assert (h.epoch, h.step) == (4, 0), h\n"
    )
    assert json.loads(path.read_bytes().split(b"\n")[1])["epoch"] == 4


def tiny_run(tmp_path: Path, *extra: str) -> Any:
    parser = build_parser()
    out = str(tmp_path / "out")
    args = parser.parse_args(
        ["--gates", "20", "--network-layers", "1", "--epochs", "2", "--output-dir", out, *extra]
    )
    validate(parser, args)
    return args


def test_a_stop_request_without_a_checkpoint_dir_stops_without_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = StopRequest()
    stop.set("test")
    with pytest.raises(CheckpointedStop) as info:
        run(tiny_run(tmp_path), stop=stop)
    assert info.value.path is None
    out, err = capsys.readouterr()
    assert "checkpoint-and-stop (test) without --checkpoint-dir" in err
    assert "CHECKPOINT" not in out and "EPOCH" not in out


def test_a_stop_request_before_the_first_step_checkpoints_epoch_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = StopRequest()
    stop.set("test")
    with pytest.raises(CheckpointedStop) as info:
        run(tiny_run(tmp_path, "--checkpoint-dir", str(tmp_path / "ck")), stop=stop)
    path = info.value.path
    assert path is not None and path.parent == (tmp_path / "ck").absolute()
    lines = [line for line in capsys.readouterr().out.splitlines() if "CHECKPOINT" in line]
    assert lines == [f"CHECKPOINT epoch=0 step=0 path={path} bytes={path.stat().st_size}"]
    head = checkpoint.inspect(path)
    assert (head.epoch, head.step, head.fields["threads"]) == (0, 0, torch.get_num_threads())
    assert head.hyperparameters["gates"] == 20


def test_no_checkpoint_before_the_interval_has_passed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ck = tmp_path / "ck"
    run(tiny_run(tmp_path, "--checkpoint-dir", str(ck), "--checkpoint-interval-s", "604800"))
    out = capsys.readouterr().out
    assert "EPOCH 2/2" in out and "CHECKPOINT" not in out
    assert not ck.exists() or not list(ck.iterdir())

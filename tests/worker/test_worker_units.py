"""Worker parts that need no MongoDB: batching, slots, the subprocess runner,
the heartbeat. The runner tests start real subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from worker_helpers import eventually, group_alive, trainer

from service.worker.gpus import Slot, detect_gpus, resolve_slots
from service.worker.heartbeat import run_heartbeat
from service.worker.logsink import _batches
from service.worker.runner import TrainerProcess

# -- batching -----------------------------------------------------------------------------


def test_batches_are_single_stream_runs_in_order() -> None:
    items = [("stdout", "a"), ("stdout", "b"), ("stderr", "c"), ("stdout", "d")]
    items += [("stdout", str(i)) for i in range(7)]
    got = list(_batches(items, max_lines=3, max_bytes=10_000))
    assert got == [
        ("stdout", ["a", "b"]), ("stderr", ["c"]), ("stdout", ["d", "0", "1"]),
        ("stdout", ["2", "3", "4"]), ("stdout", ["5", "6"]),
    ]  # fmt: skip
    flat = [(s, line) for s, lines in got for line in lines]
    assert flat == items


def test_batches_cut_at_bytes() -> None:
    items = [("stdout", "x" * 40) for _ in range(5)]
    assert [len(lines) for _, lines in _batches(items, 500, 100)] == [2, 2, 1]


# -- slots --------------------------------------------------------------------------------


async def test_slots_from_configuration_and_environment() -> None:
    assert await resolve_slots(("0", "3")) == [Slot("0"), Slot("3")]
    assert await resolve_slots(("cpu",)) == [Slot("cpu")]
    assert await detect_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}) == ("2", "5")
    assert await detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert await detect_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ("1",)
    assert await resolve_slots(None, {"CUDA_VISIBLE_DEVICES": "-1"}) == [Slot("cpu")]
    assert await resolve_slots(None, {"CUDA_VISIBLE_DEVICES": "GPU-ab12"}) == [Slot("GPU-ab12")]


def test_slot_environment_and_device() -> None:
    gpu, cpu = Slot("3"), Slot("cpu")
    assert gpu.env({"A": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == {
        "A": "1", "CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }  # fmt: skip
    assert gpu.device_args() == ["--device", "cuda"]
    assert cpu.env({})["CUDA_VISIBLE_DEVICES"] == ""
    assert cpu.device_args() == ["--device", "cpu"]


# -- the subprocess runner ----------------------------------------------------------------


class Lines:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    async def __call__(self, stream: str, line: str) -> None:
        self.items.append((stream, line))

    def of(self, stream: str) -> list[str]:
        return [line for s, line in self.items if s == stream]


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_runner_full_pipes_both_ways_and_last_line_without_newline() -> None:
    """8 MB on each pipe, stderr first: a reader of stdout alone would deadlock."""
    code = (
        "import sys\n"
        "for i in range(200_000): sys.stderr.write(f'e{i:038d}\\n')\n"
        "for i in range(200_000): sys.stdout.write(f'o{i:038d}\\n')\n"
        "sys.stdout.write('tail without newline')\n"
    )
    lines = Lines()
    proc = TrainerProcess(py(code), on_line=lines)
    await proc.start()
    assert await proc.wait() == 0
    assert lines.of("stderr") == [f"e{i:038d}" for i in range(200_000)]
    assert lines.of("stdout") == [*(f"o{i:038d}" for i in range(200_000)), "tail without newline"]


async def test_runner_long_lines_are_kept_or_split_never_lost() -> None:
    code = (
        "import sys\n"
        "sys.stdout.write('a' * 200_000 + '\\n')\n"
        "sys.stdout.write('é' * 1_500_000 + '\\n')\n"  # 3 MB in UTF-8
        "sys.stdout.write('\\n')\n"
        "sys.stdout.write('crlf\\r\\n')\n"
        "sys.stdout.buffer.write(b'bad \\xff byte\\n')\n"
    )
    lines = Lines()
    proc = TrainerProcess(py(code), on_line=lines, max_line_bytes=1 << 20)
    await proc.start()
    assert await proc.wait() == 0
    out = lines.of("stdout")
    assert out[0] == "a" * 200_000
    pieces = out[1:-3]
    assert len(pieces) == 3  # 3 MB split at 1 MiB
    assert "".join(pieces) == "é" * 1_500_000  # no character broken at a cut
    assert out[-3:] == ["", "crlf", "bad \ufffd byte"]


async def test_runner_stderr_tail() -> None:
    lines = Lines()
    code = "import sys\nfor i in range(50): print(f'err {i}', file=sys.stderr)\nsys.exit(3)"
    proc = TrainerProcess(py(code), on_line=lines)
    await proc.start()
    assert await proc.wait() == 3
    assert list(proc.stderr_tail) == [f"err {i}" for i in range(30, 50)]


@pytest.mark.parametrize("ignore_term", [False, True])
async def test_runner_terminate_takes_the_whole_group(ignore_term: bool) -> None:
    lines = Lines()
    flags = ("--ignore-term",) if ignore_term else ()
    proc = TrainerProcess(trainer("sleeper", *flags), on_line=lines)
    await proc.start()
    pgid = await eventually(lambda: _first(lines.of("stdout"), "pgid"), deadline_s=30)
    child = await eventually(lambda: _first(lines.of("stdout"), "child"), deadline_s=30)
    assert pgid == proc.pid  # its own group, led by the trainer
    assert os.getpgid(child) == pgid
    waiter = asyncio.create_task(proc.wait())
    await proc.terminate(grace_s=0.5)
    rc = await waiter
    assert rc == (-signal.SIGKILL if ignore_term else -signal.SIGTERM)
    await eventually(lambda: _async(not group_alive(pgid)))


async def test_runner_missing_command_raises() -> None:
    proc = TrainerProcess(["/nonexistent/trainer"], on_line=Lines(), die_with_worker=False)
    with pytest.raises(OSError):
        await proc.start()


async def _first(lines: list[str], key: str) -> int | None:
    for line in lines:
        if line.startswith(key + " "):
            return int(line.split()[1])
    return None


async def _async(value: object) -> object:
    return value


# -- heartbeat ----------------------------------------------------------------------------


async def test_heartbeat_touches_and_removes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "beat"
    task = asyncio.create_task(run_heartbeat(path, interval_s=0.05))
    await eventually(lambda: _async(path.exists()))
    first = path.stat().st_mtime_ns
    await eventually(lambda: _async(path.stat().st_mtime_ns > first))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not path.exists()

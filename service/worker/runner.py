"""One supervised trainer subprocess: its own process group, both pipes read line by line.

Both pipes are drained concurrently for the whole run, so a trainer that fills one of them
never blocks; a line longer than the reader's buffer is read in pieces instead of raising;
the last line is delivered even without a trailing newline. Stopping signals the whole
process group (data loader workers included), SIGTERM first and SIGKILL after a grace.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shutil
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from service import config

if TYPE_CHECKING:
    from service.worker.warm import ForkedProcess, WarmTrainer

log = structlog.get_logger(__name__)

LineHandler = Callable[[str, str], Awaitable[None]]

# A stored line is at most this long; longer ones are split into several lines (nothing is
# dropped). It keeps one log batch far below MongoDB's 16 MiB document limit.
MAX_LINE_BYTES = 1 << 20
_READ_LIMIT = 1 << 16
# After the trainer exits, how long a grandchild may keep its pipes open before it is killed.
DRAIN_TIMEOUT_S = 5.0
STDERR_TAIL_LINES = 20

# Run in place of the trainer, then exec'd into it (same pid): asks the kernel to SIGKILL the
# trainer when the worker dies, so a worker killed with SIGKILL leaves no run behind holding
# a GPU (the job is retried elsewhere after its lease). The fallback where `setpriv` is not
# there; unlike `setpriv` it also catches a worker that died before the request was made.
_PDEATHSIG = (
    "import os, sys\n"
    "try:\n"
    "    import ctypes, signal\n"
    "    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(137)  # the worker died before the kernel was told\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    print(f'cannot start the trainer {sys.argv[2]!r}: {exc}', file=sys.stderr)\n"
    "    sys.exit(127)\n"
)


# The fallback of `prlimit`: caps the data segment (heap and private mappings) at argv[1]
# bytes, then becomes the trainer. Allocations past it fail (MemoryError, or torch's
# "can't allocate memory"), which the trainer reports as out of memory (exit 71).
_RLIMIT_DATA = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def memory_limit_prefix(limit_bytes: int | None) -> list[str]:
    """The prefix that runs a command with its data segment capped at `limit_bytes`
    (RLIMIT_DATA): util-linux's `prlimit` where it is, else a Python snippet; nothing
    without a limit or off Linux."""
    if limit_bytes is None or not sys.platform.startswith("linux"):
        return []
    prlimit = shutil.which("prlimit")
    if prlimit:
        return [prlimit, f"--data={limit_bytes}:{limit_bytes}", "--"]
    return [sys.executable, "-I", "-S", "-c", _RLIMIT_DATA, str(limit_bytes)]


_launcher: list[str] | None = None
_launcher_lock = asyncio.Lock()


async def parent_death_launcher() -> list[str]:
    """The prefix that makes a command die with the worker: util-linux's `setpriv` where it
    knows `--pdeathsig` (a C program, ~5 ms), else a Python snippet (~25 ms of CPU per run).
    Checked once per process; on other systems than Linux, nothing."""
    global _launcher
    async with _launcher_lock:
        if _launcher is None:
            _launcher = await _find_launcher()
        return _launcher


async def _find_launcher() -> list[str]:
    if not sys.platform.startswith("linux"):
        return []
    setpriv = shutil.which("setpriv")
    if setpriv:
        cmd = [setpriv, "--pdeathsig", "KILL", "--"]
        try:
            probe = await asyncio.create_subprocess_exec(
                *cmd, "true",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await probe.wait() == 0:
                return cmd
        except OSError:
            pass
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG, str(os.getpid())]


class TrainerProcess:
    """Start once, then `wait()` for the exit code; `terminate()` may run concurrently.

    With `warm` (the slot's warm trainer, service.worker.warm) the process is forked from
    it, else (or when it cannot) started cold; everything after the start is the same."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        on_line: LineHandler,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_worker: bool = True,
        max_line_bytes: int = MAX_LINE_BYTES,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        stdin: bool = False,
        memory_limit: int | None = None,
        warm: WarmTrainer | None = None,
    ) -> None:
        self.argv = list(argv)
        self._warm = warm
        self.forked_from: int | None = None  # the warm trainer's pid, for a forked run
        self.memory_limit = memory_limit
        self._on_line = on_line
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._die_with_worker = die_with_worker
        self._max_line_bytes = max_line_bytes
        self._drain_timeout_s = drain_timeout_s
        self._stdin = stdin
        self._proc: asyncio.subprocess.Process | ForkedProcess | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """Started and not yet reaped."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Raises OSError when the command cannot be started at all."""
        if self._warm is not None:
            server = self._warm.server_pid
            self._proc = await self._warm.spawn(
                self.argv, env=self._env if self._env is not None else config.environment(),
                cwd=self._cwd if self._cwd is not None else Path.cwd(),
                memory_limit=self.memory_limit, stdin=self._stdin,
            )  # fmt: skip
            if self._proc is not None:
                self.forked_from = self._warm.server_pid or server
                self._start_pumps(self._proc.stdout, self._proc.stderr)
                return
        prefix = await parent_death_launcher() if self._die_with_worker else []
        argv = [*prefix, *memory_limit_prefix(self.memory_limit), *self.argv]
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if self._stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            cwd=self._cwd,
            start_new_session=True,  # own session, so its own process group (pgid == pid)
            limit=_READ_LIMIT,
        )
        self._start_pumps(self._proc.stdout, self._proc.stderr)

    def _start_pumps(
        self, stdout: asyncio.StreamReader | None, stderr: asyncio.StreamReader | None
    ) -> None:
        assert stdout is not None and stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump("stdout", stdout)),
            asyncio.create_task(self._pump("stderr", stderr)),
        ]

    async def wait(self) -> int:
        """The exit code (negative: killed by that signal), once every line was handed on."""
        assert self._proc is not None, "start() first"
        rc = await self._proc.wait()
        _, still_open = await asyncio.wait(self._pumps, timeout=self._drain_timeout_s)
        # Whatever is left of the group now is an orphan of the run: it must not outlive it.
        self.signal_group(signal.SIGKILL)
        if still_open:
            log.warning("trainer's children kept its pipes open; killed", pid=self._proc.pid)
            _, still_open = await asyncio.wait(still_open, timeout=self._drain_timeout_s)
            for task in still_open:  # held by something outside the group: give up on it
                task.cancel()
        for task in self._pumps:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        self.returncode = rc
        return rc

    async def terminate(self, grace_s: float) -> None:
        """SIGTERM to the group, SIGKILL after `grace_s` if the trainer has not exited."""
        if self._proc is None or self._proc.returncode is not None:
            self.signal_group(signal.SIGKILL)
            return
        self.signal_group(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout=grace_s)
        self.signal_group(signal.SIGKILL)

    async def kill(self, reap_within_s: float = 5.0) -> None:
        """SIGKILL the group and wait for the trainer's exit: a run being cancelled (the
        worker stopping) leaves no process whose exit the event loop would be told of after
        it closed ("Event loop is closed" from a pipe transport's `__del__` at exit)."""
        self.signal_group(signal.SIGKILL)
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout=reap_within_s)

    def send(self, line: str) -> None:
        """One line to the trainer's stdin (trainer.supervision); never blocks, and a trainer
        that has exited or closed its stdin simply does not hear it."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            proc.stdin.write(line.encode() + b"\n")

    def signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def _pump(self, stream: str, reader: asyncio.StreamReader) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = bytearray()
        split = False  # the current line was already handed on in pieces
        while True:
            eof = False
            try:
                chunk = await reader.readuntil(b"\n")
                complete = True
            except asyncio.IncompleteReadError as exc:
                chunk, complete, eof = exc.partial, True, True
            except asyncio.LimitOverrunError as exc:
                chunk, complete = await reader.read(exc.consumed), False
            pending += chunk
            while len(pending) >= self._max_line_bytes:
                piece = bytes(pending[: self._max_line_bytes])
                del pending[: self._max_line_bytes]
                await self._emit(stream, decoder.decode(piece, final=False))
                split = True
            if complete and (pending or not eof):
                if pending.endswith(b"\n"):
                    del pending[-1:]
                    if pending.endswith(b"\r"):
                        del pending[-1:]
                tail = decoder.decode(bytes(pending), final=True)
                if tail or not split:
                    await self._emit(stream, tail)
                pending.clear()
                decoder.reset()
                split = False
            if eof:
                return

    async def _emit(self, stream: str, line: str) -> None:
        if stream == "stderr":
            self.stderr_tail.append(line)
        await self._on_line(stream, line)

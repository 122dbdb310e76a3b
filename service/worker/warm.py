"""A slot's warm trainer: a fork server (trainer/forkserver.py) that forks each run.

A cold run spends seconds importing torch and the trainer and loading its data set before
its first epoch. With `GATEQUEUE_WARM_START` on (the default), each slot keeps a server
that did that once and forks a child per run; each run is still a process of its own (own
session and process group, pipes, environment, RLIMIT_DATA, exit code), so the lease fence,
cancel, checkpoint-and-stop and memory accounting work on it unchanged: `ForkedProcess`
offers `TrainerProcess` what an asyncio subprocess does (docs/worker.md, "Warm starts").

The server is started on first need and again whenever it died or refuses a run as
`stale` (the trainer's code changed on disk, or the slot's environment did). Anything that
goes wrong on the way (no server, a refusal, a broken socket) makes the run start cold,
never fail. CUDA is initialised only in the forked runs, never in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from service.cancellation import cancel_and_wait
from service.worker.runner import parent_death_launcher
from trainer import protocol

log = structlog.get_logger(__name__)

READY_WITHIN_S = 180.0  # imports on a busy machine, and the C++ kernel's first build
RETRY_AFTER_S = 300.0  # a server that failed to start is not tried again sooner
REPLY_WITHIN_S = 60.0  # a fork; a `keep`: loading the run's data set the first time
_READ_LIMIT = 1 << 16
# Started with -c so that `trainer.forkserver` imports whatever PYTHONPATH the slot's
# environment has: the worker's own trainer package is appended (found last, as the
# fallback a cold `python -m trainer` would also reach through the worker's PYTHONPATH).
_BOOTSTRAP = (
    "import sys\n"
    "sys.path.append(sys.argv.pop(1))\n"
    "from trainer.forkserver import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
_PACKAGE_ROOT = str(Path(protocol.__file__).resolve().parents[1])


def entry_of(trainer_cmd: Sequence[str]) -> list[str] | None:
    """What the fork server runs for this command (`-m MODULE` or a script), or None when
    the command is not the worker's own Python running one (that command starts cold)."""
    if len(trainer_cmd) < 2 or not sys.platform.startswith("linux"):
        return None
    try:
        same = os.path.samefile(trainer_cmd[0], sys.executable)
    except OSError:
        same = False
    if not same:
        return None
    if trainer_cmd[1] == "-m" and len(trainer_cmd) >= 3:
        return list(trainer_cmd[1:3])
    if not trainer_cmd[1].startswith("-"):
        return [trainer_cmd[1]]
    return None


class ForkedProcess:
    """A run the server forked: `pid`, `returncode`, `stdin`, `stdout`, `stderr` and
    `wait()`, as `asyncio.subprocess.Process` has them. Its exit code comes from the server
    that reaped it; a server that died took the run with it (SIGKILL)."""

    def __init__(
        self,
        pid: int,
        exited: asyncio.Future[int],
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._exited = exited
        exited.add_done_callback(self._on_exit)

    def _on_exit(self, fut: asyncio.Future[int]) -> None:
        self.returncode = fut.result() if not fut.cancelled() else -signal.SIGKILL
        if self.stdin is not None:
            self.stdin.close()

    async def wait(self) -> int:
        await asyncio.shield(self._exited)
        if self.returncode is None:  # done, but its callback has not run yet
            self._on_exit(self._exited)
        assert self.returncode is not None
        return self.returncode


class _Server:
    """One running fork server and its control socket."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.pid: int | None = None  # the server's own, from its ready message
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_retrieved)  # a server lost before anyone waited on it
        self.reply: asyncio.Future[dict[str, Any]] | None = None
        self.exits: dict[int, asyncio.Future[int]] = {}
        self.closed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def alive(self) -> bool:
        return not self.closed.is_set() and self.proc.returncode is None

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self.sock, protocol.FORK_MESSAGE_MAX)
                if not data:
                    break
                self._dispatch(protocol.parse_fork_message(data))
        except OSError as exc:
            log.warning("warm trainer's socket failed", error=str(exc))
        finally:
            self._lost()

    def _dispatch(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        op = message["op"]
        if op == protocol.FORK_READY:
            self.pid = int(message["pid"])
            if not self.ready.done():
                self.ready.set_result(self.pid)
        elif op == protocol.FORK_EXITED:
            fut = self.exits.pop(int(message["pid"]), None)
            if fut is not None and not fut.done():
                fut.set_result(int(message["code"]))
        elif self.reply is not None and not self.reply.done():
            if op == protocol.FORK_SPAWNED:
                # Registered as the reply is read: an exit read right after is not missed.
                exited = asyncio.get_running_loop().create_future()
                self.exits[int(message["pid"])] = exited
                message["exited"] = exited
            self.reply.set_result(message)

    def _lost(self) -> None:
        """The server is gone (or its socket is): every run it forked died with it."""
        self.closed.set()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("the warm trainer exited while starting"))
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("the warm trainer exited"))
        for pid, fut in self.exits.items():
            asyncio.get_running_loop().create_task(_killed_with_server(pid, fut))
        self.exits.clear()

    async def log_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            log.warning("warm trainer", line=raw.decode(errors="replace").rstrip())

    async def close(self) -> None:
        """Closing the socket tells the server to kill what it forked and exit."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout=5.0)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        await cancel_and_wait(*self.tasks)


def _retrieved(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _killed_with_server(pid: int, fut: asyncio.Future[int]) -> None:
    """A run whose server died: its parent-death signal (SIGKILL) ends it; its exit is
    reported once the process is really gone (a pidfd says so without reaping it)."""
    with contextlib.suppress(OSError):
        pidfd = os.pidfd_open(pid)
        gone = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, gone.set)
        try:
            await gone.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    if not fut.done():
        fut.set_result(-signal.SIGKILL)


class WarmTrainer:
    """One slot's fork server: `spawn()` a run, `close()` at the end."""

    def __init__(
        self,
        trainer_cmd: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path,
        die_with_worker: bool = True,
    ) -> None:
        entry = entry_of(trainer_cmd)
        if entry is None:
            raise ValueError(f"not a Python trainer command: {list(trainer_cmd)!r}")
        self.python = trainer_cmd[0]
        self.entry = entry
        self.env = dict(env)
        self.cwd = cwd
        self.die_with_worker = die_with_worker
        self._server: _Server | None = None
        self._lock = asyncio.Lock()
        self.started = 0  # servers started so far (tests, logs)
        self._failed_at: float | None = None  # the last start that failed (monotonic)

    @property
    def server_pid(self) -> int | None:
        server = self._server
        return server.pid if server is not None and server.alive else None

    async def start(self) -> bool:
        """Start the server unless one is running; True once it is ready."""
        async with self._lock:
            return await self._ensure() is not None

    async def _ensure(self) -> _Server | None:
        if self._server is not None and self._server.alive:
            return self._server
        if self._server is not None:
            await self._server.close()
            self._server = None
        if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER_S:
            return None  # runs start cold meanwhile, without waiting for a start that fails
        try:
            self._server = await self._launch()
            await asyncio.wait_for(asyncio.shield(self._server.ready), READY_WITHIN_S)
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.warning("warm trainer did not start; runs start cold", error=str(exc),
                        retry_after_s=RETRY_AFTER_S)  # fmt: skip
            self._failed_at = time.monotonic()
            if self._server is not None:
                await self._server.close()
                self._server = None
            return None
        self._failed_at = None
        log.info("warm trainer ready", pid=self._server.pid, entry=self.entry)
        return self._server

    async def _launch(self) -> _Server:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            prefix = await parent_death_launcher() if self.die_with_worker else []
            self.cwd.mkdir(parents=True, exist_ok=True)
            proc = await asyncio.create_subprocess_exec(
                *prefix, self.python, "-c", _BOOTSTRAP, _PACKAGE_ROOT,
                "--fd", str(theirs.fileno()), "--", *self.entry,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=self.env, cwd=self.cwd,
                pass_fds=(theirs.fileno(),), start_new_session=True,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.started += 1
        server = _Server(proc, ours)
        server.tasks = [
            asyncio.create_task(server.read(), name="warm-trainer-read"),
            asyncio.create_task(server.log_stderr(), name="warm-trainer-stderr"),
        ]
        return server

    async def prepare(self, argv: Sequence[str]) -> bool:
        """Before a run's environment is made (its first lease deadline in it): the server
        ready, started or replaced if it died or its trainer code changed, and the run's
        data set loaded in it, so that `spawn` is a fork and nothing slower. False: the run
        will start cold."""
        message = protocol.fork_message(protocol.FORK_KEEP, argv=list(argv))
        async with self._lock:
            for _ in range(2):
                server = await self._ensure()
                if server is None:
                    return False
                try:
                    reply = await self._ask(server, message, [])
                except (OSError, ConnectionError, TimeoutError) as exc:
                    log.warning("warm trainer failed; starting a new one", error=str(exc))
                    await self._drop()
                    continue
                if reply["op"] == protocol.FORK_KEPT:
                    return True
                if not reply.get("stale"):
                    return False
                log.info("warm trainer is stale; starting a new one", why=reply.get("why"))
                await self._drop()
            return False

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        memory_limit: int | None,
        stdin: bool,
    ) -> ForkedProcess | None:
        """The run forked from the ready server, or None: start it cold (no server, or it
        refused; a stale one is replaced for the next run, not this one, whose lease
        deadline in `env` must still hold when it starts)."""
        async with self._lock:
            server = self._server
            if server is None or not server.alive:
                return None
            try:
                reply, pipes, exited = await self._request(
                    server, argv, env, cwd, memory_limit, stdin
                )
            except (OSError, ConnectionError, TimeoutError) as exc:
                log.warning("warm trainer failed; starting the run cold", error=str(exc))
                await self._drop()
                return None
            if exited is not None:
                return await self._forked(int(reply["pid"]), exited, pipes, stdin)
            for fd in pipes:
                os.close(fd)
            log.warning("warm trainer refused the run; starting it cold",
                        why=str(reply.get("why", reply)))  # fmt: skip
            if reply.get("stale"):
                await self._drop()
            return None

    async def _drop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def _ask(self, server: _Server, message: bytes, fds: list[int]) -> dict[str, Any]:
        """One request and its reply. A few KiB into an empty socket buffer never blocks
        (if it would: OSError, and the run starts cold)."""
        server.reply = asyncio.get_running_loop().create_future()
        try:
            socket.send_fds(server.sock, [message], fds)
            return await asyncio.wait_for(asyncio.shield(server.reply), REPLY_WITHIN_S)
        finally:
            server.reply = None

    async def _request(
        self,
        server: _Server,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        memory_limit: int | None,
        stdin: bool,
    ) -> tuple[dict[str, Any], list[int], asyncio.Future[int] | None]:
        """Send the spawn request with the child's ends of three pipes; the reply, our
        ends (stdin's write end if asked for, stdout's and stderr's read ends) and, for a
        forked run, where its exit code will arrive."""
        in_r, in_w = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), -1)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ours = [in_w, out_r, err_r]
        try:
            message = protocol.fork_message(
                protocol.FORK_SPAWN, argv=list(argv), env=dict(env), cwd=str(cwd),
                memoryLimit=memory_limit,
            )  # fmt: skip
            reply = await self._ask(server, message, [in_r, out_w, err_w])
        except BaseException:
            for fd in ours:
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        exited: asyncio.Future[int] | None = reply.get("exited")
        return reply, [fd for fd in ours if fd >= 0], exited

    async def _forked(
        self, pid: int, exited: asyncio.Future[int], pipes: list[int], stdin: bool
    ) -> ForkedProcess:
        loop = asyncio.get_running_loop()
        fds = list(pipes)
        writer = None
        if stdin:
            in_w = fds.pop(0)
            transport, proto = await loop.connect_write_pipe(
                lambda: asyncio.streams.FlowControlMixin(loop=loop),  # type: ignore[attr-defined]
                os.fdopen(in_w, "wb", buffering=0),
            )
            writer = asyncio.StreamWriter(transport, proto, None, loop)
        readers = []
        for fd in fds:
            reader = asyncio.StreamReader(limit=_READ_LIMIT, loop=loop)
            await loop.connect_read_pipe(
                lambda r=reader: asyncio.StreamReaderProtocol(r, loop=loop),  # type: ignore[misc]
                os.fdopen(fd, "rb", buffering=0),
            )
            readers.append(reader)
        return ForkedProcess(pid, exited, writer, readers[0], readers[1])

    async def close(self) -> None:
        async with self._lock:
            if self._server is not None:
                await self._server.close()
                self._server = None

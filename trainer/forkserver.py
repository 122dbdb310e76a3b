"""`python -m trainer.forkserver --fd N [--] ENTRY`: a warm trainer, one per worker slot.

A cold run spends seconds before its first epoch importing torch and the trainer and
loading its data set; a tiny run trains in less. The worker (service/worker/warm.py) keeps
this server per slot: it imports what `ENTRY` (`-m trainer`, or a script path) needs once,
then forks one child per run. Each run is still its own process, in its own session, with
its own stdin/stdout/stderr (the worker's pipes, passed over the control socket), its own
environment, working directory and RLIMIT_DATA cap, its exit code reported back; the
worker supervises it as it does a cold subprocess (docs/worker.md, "Warm starts").

What the server must never do: initialise CUDA (a forked child could not use it), start
OpenMP or other thread pools beyond what imports do, or download anything. It loads data
sets on the CPU only (`trainer.data.datasets.keep_loaded`), before the fork that needs
them, so later runs inherit them.

The server exits when the worker closes the control socket (killing what it forked) or
dies (PR_SET_PDEATHSIG, set by the worker's launcher); every run it forks dies with it.
Before each fork it checks that the trainer's code it imported is unchanged on disk and
that the run's environment is the one it started with; otherwise it refuses as `stale`
and the worker starts a new one. Messages: trainer/protocol.py (`FORK_*`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import io
import os
import random
import resource
import runpy
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from trainer import environment, protocol

# What the environment of one run may differ in from the server's: the worker's
# supervision names and the unbuffered output it asks for (trainer/protocol.py).
PER_RUN_ENV = frozenset(protocol.supervised_env(deadline=0.0, job_id="", attempt=0, attempt_id=""))
# Imported once for `-m trainer` (what the run imports lazily, short of CUDA).
WARM_IMPORTS: dict[str, tuple[str, ...]] = {
    "trainer": (
        "trainer.cli", "trainer.loop", "trainer.export", "trainer.run_state",
        "trainer.checkpoint", "trainer.circuit.api", "sklearn.datasets",
        "sklearn.model_selection",
    ),
}  # fmt: skip
_PR_SET_PDEATHSIG = 1
_libc: Any = None


def _prepare_libc() -> None:
    """Loaded once here, so a child's prctl costs nothing."""
    global _libc
    with contextlib.suppress(OSError, AttributeError):
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl  # noqa: B018  (resolved now, not in the child)


def code_fingerprint() -> tuple[tuple[str, int, int], ...]:
    """(file, size, mtime) of every trainer module this process imported, and of the source
    a module builds from (its `SOURCE`: the C++ kernel, loaded once here): a change on disk
    means a forked run would train with stale code."""
    out = []
    for name, module in list(sys.modules.items()):
        if name != "trainer" and not name.startswith("trainer."):
            continue
        source = getattr(module, "SOURCE", None)
        built_from = source if isinstance(source, Path) else None
        for path in (getattr(module, "__file__", None), built_from):
            if not path:
                continue
            try:
                st = os.stat(path)
            except OSError:
                out.append((str(path), -1, -1))
                continue
            out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def _steady_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in PER_RUN_ENV}


class Entry:
    """What a run executes: `-m MODULE` or a script, as `python` would."""

    def __init__(self, words: Sequence[str]) -> None:
        if len(words) >= 2 and words[0] == "-m":
            self.module: str | None = words[1]
            self.script: str | None = None
        elif len(words) >= 1 and not words[0].startswith("-"):
            self.module, self.script = None, words[0]
        else:
            raise ValueError(f"not a module or script: {list(words)!r}")
        self.words = list(words[:2] if self.module else words[:1])

    def matches(self, argv: Sequence[str]) -> bool:
        """argv (without the interpreter) starts with this entry."""
        return list(argv[: len(self.words)]) == self.words

    def warm_up(self) -> None:
        if self.module is None:
            return
        environment.set_default("OMP_WAIT_POLICY", "PASSIVE")  # before torch, as a cold run
        for name in WARM_IMPORTS.get(self.module, ()):
            with contextlib.suppress(ImportError):
                __import__(name)
        if self.module == "trainer":
            with contextlib.suppress(Exception):  # the run builds it and says what fails
                from trainer.kernels.cpu import load_kernel

                load_kernel()
            with contextlib.suppress(Exception):  # Adam's first use imports torch._dynamo (s)
                import torch

                from trainer.device import make_optimizer

                make_optimizer([torch.zeros(1, requires_grad=True)], 0.1, "cpu")

    def keep_data(self, args: Sequence[str]) -> tuple[str, str, str | None] | None:
        """Load the run's data set into this process (before the fork); what it names."""
        if self.module != "trainer":
            return None
        p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        p.add_argument("--dataset", default="mnist")
        p.add_argument("--data-dir", default="data")
        p.add_argument("--dataset-file", default=None)
        try:
            known, _ = p.parse_known_args(list(args))
        except SystemExit:
            return None
        from trainer.data.datasets import keep_loaded

        keep_loaded(known.dataset, known.data_dir, known.dataset_file)
        return known.dataset, known.data_dir, known.dataset_file

    def run(self, args: Sequence[str]) -> int:
        """Runs the entry in this (forked) process as `python` would; its exit code."""
        try:
            if self.module is not None:
                sys.argv = [self.module, *args]
                sys.path[0] = os.getcwd()
                runpy.run_module(self.module, run_name="__main__", alter_sys=True)
            else:
                assert self.script is not None
                sys.argv = [self.script, *args]
                sys.path[0] = os.path.dirname(os.path.abspath(self.script))
                runpy.run_path(self.script, run_name="__main__")
        except SystemExit as exc:
            return _exit_code(exc.code)
        except KeyboardInterrupt:
            _flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)  # as python does: killed by SIGINT
            return protocol.EXIT_INTERRUPTED
        except BaseException as exc:
            _print_exception(exc)
            return 1
        return 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _print_exception(exc: BaseException) -> None:
    """The traceback a cold run would print: without this module's and runpy's frames."""
    tb: TracebackType | None = exc.__traceback__
    ours = {__file__, runpy.__file__}
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in ours or "runpy" in tb.tb_frame.f_code.co_filename
    ):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _reopen_stdio(unbuffered: bool) -> None:
    """New stdio objects on fds 0-2 (now the run's pipes), buffered as a cold `python`
    would buffer them under the run's environment (`sys.__stdout__` and the others still
    write to the same fds)."""
    enc = sys.stdout.encoding if sys.stdout is not None else "utf-8"
    sys.stdin = open(0, encoding=enc, closefd=False)
    buffering = 0 if unbuffered else -1
    sys.stdout = io.TextIOWrapper(
        open(1, "wb", buffering=buffering, closefd=False),
        encoding=enc, errors="strict", write_through=unbuffered,
    )  # fmt: skip
    sys.stderr = io.TextIOWrapper(
        open(2, "wb", buffering=buffering, closefd=False),
        encoding=enc, errors="backslashreplace", line_buffering=True, write_through=unbuffered,
    )  # fmt: skip


class Server:
    def __init__(self, sock: socket.socket, entry: Entry, env: Mapping[str, str]) -> None:
        self.sock = sock
        self.entry = entry
        self.pid = os.getpid()
        self.children: dict[int, int] = {}  # pid -> pidfd
        self.selector = selectors.DefaultSelector()
        self.fingerprint = code_fingerprint()
        self.env = _steady_env(env)  # as started: before imports set their defaults

    def send(self, op: str, **fields: Any) -> None:
        self.sock.send(protocol.fork_message(op, **fields))

    def serve(self) -> None:
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.send(protocol.FORK_READY, pid=os.getpid())
        try:
            while True:
                for key, _ in self.selector.select():
                    if key.fileobj is self.sock:
                        if not self._request():
                            return
                    else:
                        self._reap(key.data)
        finally:
            self._kill_children()

    def _request(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, protocol.FORK_MESSAGE_MAX, 3)
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        message = protocol.parse_fork_message(data)
        try:
            if message is not None and message["op"] == protocol.FORK_KEEP:
                self._keep(message)
            else:
                self._spawn(message, fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return True

    def _keep(self, message: dict[str, Any]) -> None:
        argv = list(message["argv"])
        if code_fingerprint() != self.fingerprint:
            self.send(protocol.FORK_REFUSED, why="the trainer's code changed", stale=True)
            return
        kept = None
        if self.entry.matches(argv[1:]):
            with contextlib.suppress(Exception):  # the run loads it itself, says what fails
                kept = self.entry.keep_data(argv[1 + len(self.entry.words) :])
        self.send(protocol.FORK_KEPT, kept=kept is not None)

    def _spawn(self, message: dict[str, Any] | None, fds: list[int]) -> None:
        if message is None or message["op"] != protocol.FORK_SPAWN or len(fds) != 3:
            self.send(protocol.FORK_REFUSED, why="not a spawn request with 3 fds", stale=False)
            return
        argv, env = list(message["argv"]), dict(message["env"])
        if not self.entry.matches(argv[1:]):
            self.send(protocol.FORK_REFUSED, why="another trainer command", stale=False)
            return
        if code_fingerprint() != self.fingerprint:
            self.send(protocol.FORK_REFUSED, why="the trainer's code changed", stale=True)
            return
        if _steady_env(env) != self.env:
            self.send(protocol.FORK_REFUSED, why="another environment", stale=True)
            return
        args = argv[1 + len(self.entry.words) :]
        try:
            kept = self.entry.keep_data(args)
        except Exception:  # the run loads it itself and reports what fails
            kept = None
        _flush()
        # The run's pid is told only once the run leads its own process group (or died): a
        # signal to the group sent as soon as the worker knows the pid must not miss it.
        settled_r, settled_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(settled_r)
            os.close(settled_w)
            self.send(protocol.FORK_REFUSED, why=f"fork failed: {exc}", stale=False)
            return
        if pid == 0:
            os.close(settled_r)
            _child(self, args, env, message, fds, kept, settled_w)
        os.close(settled_w)
        with contextlib.suppress(OSError):
            os.read(settled_r, 1)  # EOF: the child closed its end after setsid, or exited
        os.close(settled_r)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = pidfd
        self.selector.register(pidfd, selectors.EVENT_READ, pid)
        self.send(protocol.FORK_SPAWNED, pid=pid)

    def _reap(self, pid: int) -> None:
        pidfd = self.children.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            self.send(protocol.FORK_EXITED, pid=pid, code=os.waitstatus_to_exitcode(status))

    def _kill_children(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _child(
    server: Server,
    args: list[str],
    env: dict[str, str],
    message: dict[str, Any],
    fds: list[int],
    kept: tuple[str, str, str | None] | None,
    settled: int,
) -> NoReturn:
    """The forked run: its own session, pipes, environment, directory and cap; never
    returns into the server's loop. `settled` is closed once it leads its own group."""
    code = 127
    try:
        os.setsid()  # its own process group: the worker signals the run's whole group
        os.close(settled)
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != server.pid:
            os._exit(137)  # the server died before the kernel was told
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in (*fds, *server.children.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        server.selector.close()
        server.sock.close()
        environment.become(env)
        os.chdir(message["cwd"])
        if kept is not None:
            from trainer.data.datasets import forget_others

            forget_others(*kept)
        limit = message.get("memoryLimit")
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (int(limit), int(limit)))
        _reopen_stdio(bool(env.get("PYTHONUNBUFFERED")))
        random.seed()
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()
        code = server.entry.run(args)
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()
    except BaseException as exc:
        with contextlib.suppress(Exception):
            _print_exception(exc)
    finally:
        _flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.forkserver")
    p.add_argument("--fd", type=int, required=True, help="the control socket (SOCK_SEQPACKET)")
    p.add_argument("entry", nargs=argparse.REMAINDER, help="-m MODULE, or a script path")
    args = p.parse_args(argv)
    words = args.entry[1:] if args.entry[:1] == ["--"] else args.entry
    sock = socket.socket(fileno=args.fd)
    os.close(os.pidfd_open(os.getpid()))  # Linux >= 5.3, else exit here: runs start cold
    env = environment.snapshot()
    entry = Entry(words)
    _prepare_libc()
    entry.warm_up()
    Server(sock, entry, env).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

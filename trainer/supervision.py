"""The trainer's side of its worker's supervision: lease deadlines and stop requests
(docs/design.md, "Trainer output" and "Fencing"; the lines are trainer/protocol.py's).

A worker that is frozen (SIGSTOP, a stalled VM) or cut off from MongoDB cannot renew its
lease, and another worker may then claim the job. Its trainer must not go on training the
same job twice at once, so the worker tells its trainer, on every renewal, until when the
lease surely holds (`protocol.Lease`, on this machine's monotonic clock: one clock for every
process of a Linux host, immune to wall-clock changes). A trainer that has heard of no later
deadline when one passes stops at once with `protocol.EXIT_FENCED`.

Any other line is a request, kept for the trainer to take (`Supervision.take_requests`).
The one defined is `protocol.CheckpointAndStop`: the worker is shutting down, so the trainer
finishes its step, writes a checkpoint and exits with `protocol.EXIT_CHECKPOINTED`.

Any trainer can follow the protocol; `python -m trainer` and the test stand-ins call
`start()`, which does nothing unless the worker set the supervised environment. No torch here.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from trainer import environment, protocol

CHECK_EVERY_S = 0.1


@dataclass
class Supervision:
    """The trainer's side: the newest deadline heard, and requests from the worker."""

    deadline: float
    requests: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def heard(self, line: str) -> None:
        text = line.strip()
        if text.partition(" ")[0] == protocol.Lease.WORD:
            lease = protocol.Lease.parse(text)  # a garbled deadline is dropped, not a request
            if lease is not None:
                with self._lock:
                    self.deadline = max(self.deadline, lease.deadline)
        elif text:
            with self._lock:
                self.requests.append(text)

    def take_requests(self) -> list[str]:
        with self._lock:
            taken, self.requests = self.requests, []
        return taken

    def expired(self, now: float | None = None) -> bool:
        with self._lock:
            return (time.monotonic() if now is None else now) >= self.deadline


def _read(supervision: Supervision) -> None:
    for line in sys.stdin:
        supervision.heard(line)
    # EOF: the worker closed the pipe or died; the deadline still decides (and a dead
    # worker's trainer is killed by the kernel anyway, service.worker.runner).


def _watch(supervision: Supervision) -> None:
    while not supervision.expired():
        time.sleep(CHECK_EVERY_S)
    print(
        "gatequeue: the worker did not confirm the job's lease by its deadline; stopping so "
        "that the job cannot run twice at once",
        file=sys.stderr,
        flush=True,
    )
    os._exit(protocol.EXIT_FENCED)


def start() -> Supervision | None:
    """Under a worker, start listening and watching (daemon threads); else None."""
    supervisor = environment.supervisor()
    if supervisor is None:
        return None
    supervision = Supervision(supervisor.first_deadline)
    threading.Thread(target=_read, args=(supervision,), name="lease-reader", daemon=True).start()
    threading.Thread(target=_watch, args=(supervision,), name="lease-fence", daemon=True).start()
    return supervision


class StopRequest:
    """Checkpoint-and-stop, asked for by the worker on stdin or by SIGUSR1. The training
    loop polls `requested()` between steps, so the step in progress always finishes; a
    signal handler only sets a flag, which is safe at any moment."""

    def __init__(self, supervised: Supervision | None = None) -> None:
        self._event = threading.Event()
        self._supervised = supervised
        self.source: str | None = None
        self.ignored: list[str] = []

    def install_signal(self) -> Callable[[], None]:
        """Handle SIGUSR1 (whose default action would kill us); returns the undo."""
        previous = signal.signal(signal.SIGUSR1, self._on_signal)

        def undo() -> None:
            signal.signal(signal.SIGUSR1, previous)

        return undo

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.set("SIGUSR1")

    def set(self, source: str) -> None:
        if not self._event.is_set():
            self.source = source
        self._event.set()

    def requested(self) -> bool:
        if self._supervised is not None:
            for line in self._supervised.take_requests():
                if isinstance(protocol.parse_command(line), protocol.CheckpointAndStop):
                    self.set("stdin")
                else:
                    self.ignored.append(line)
        return self._event.is_set()

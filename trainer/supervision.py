"""The worker's channel to the trainer it runs: lease deadlines and requests on the trainer's
stdin (docs/design.md, "Trainer output" and "Fencing").

A worker that is frozen (SIGSTOP, a stalled VM) or cut off from MongoDB cannot renew its
lease, and another worker may then claim the job. Its trainer must not go on training the
same job twice at once, so the worker tells its trainer, on every renewal, until when the
lease surely holds: `lease <deadline>` on stdin, the deadline on this machine's monotonic
clock (one clock for every process of a Linux host, immune to wall-clock changes). A trainer
that has heard of no later deadline when one passes stops at once with EXIT_FENCED.

Any other line is a request, kept for the trainer to take (`Supervision.take_requests`).
The one defined is CHECKPOINT_AND_STOP: the worker is shutting down, so the trainer finishes
its step, writes a checkpoint and exits with trainer.checkpoint.EXIT_CHECKPOINTED.

Any trainer can follow the protocol; `python -m trainer` and the test stand-ins call
`start()`, which does nothing unless the worker set GATEQUEUE_SUPERVISED=stdin. No torch here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field

SUPERVISED_ENV = "GATEQUEUE_SUPERVISED"
DEADLINE_ENV = "GATEQUEUE_LEASE_DEADLINE"
EXIT_FENCED = 75  # EX_TEMPFAIL: the job is not failed, it may be running elsewhere
# EX_OSERR: an allocation failed (host RAM under the worker's limit, or CUDA memory); the
# worker reports it with the job's estimate and the limit (docs/worker.md, "Memory").
EXIT_OUT_OF_MEMORY = 71
CHECK_EVERY_S = 0.1
CHECKPOINT_AND_STOP = "checkpoint-and-stop"


def trainer_env(deadline: float) -> dict[str, str]:
    """What the worker adds to a trainer's environment: supervised, with a first deadline."""
    return {SUPERVISED_ENV: "stdin", DEADLINE_ENV: repr(deadline)}


def lease_line(deadline: float) -> str:
    return f"lease {deadline!r}"


def checkpoint_and_stop_line() -> str:
    """What the worker sends to have its trainer checkpoint and exit (trainer.checkpoint)."""
    return CHECKPOINT_AND_STOP


@dataclass
class Supervision:
    """The trainer's side: the newest deadline heard, and requests from the worker."""

    deadline: float
    requests: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def heard(self, line: str) -> None:
        word, _, rest = line.strip().partition(" ")
        if word == "lease":
            try:
                deadline = float(rest)
            except ValueError:
                return
            with self._lock:
                self.deadline = max(self.deadline, deadline)
        elif word:
            with self._lock:
                self.requests.append(line.strip())

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
    os._exit(EXIT_FENCED)


def start() -> Supervision | None:
    """Under a worker, start listening and watching (daemon threads); else None."""
    if os.environ.get(SUPERVISED_ENV) != "stdin":
        return None
    supervision = Supervision(float(os.environ[DEADLINE_ENV]))
    threading.Thread(target=_read, args=(supervision,), name="lease-reader", daemon=True).start()
    threading.Thread(target=_watch, args=(supervision,), name="lease-fence", daemon=True).start()
    return supervision

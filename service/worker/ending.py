"""How a run ended, decided from what was observed: pure functions, no MongoDB, no process.

`service.worker.jobrun` supervises a trainer and gathers what happened (its exit code, who
stopped it and why, the tail of its stderr, the memory numbers); this module turns that into
the one final write (`Ending`) and the texts a researcher reads. Kept apart so that every
decision can be tested on plain values (tests/worker/test_worker_ending.py), as rq keeps
its job lifecycle apart from its worker.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from service.jobs.memory import human
from service.jobs.record import Circuit
from service.jobs.status import Status
from trainer import protocol

ERROR_MAX_CHARS = 8000
MEMORY_EVENTS = Path("/sys/fs/cgroup/memory.events")


class StopReason(StrEnum):
    CANCEL = "cancel"  # the user asked: Cancelled
    SHUTDOWN = "shutdown"  # the worker is stopping: back to Pending
    LOST = "lost"  # the lease is gone: write nothing
    LOG_FAILED = "log_failed"  # logs cannot be stored: Failed
    SCHEDULER = "scheduler"  # its sweep's scheduler stopped it: Succeeded, stoppedEarly


@dataclass(frozen=True)
class Ending:
    """The final write a run makes: a final status, or a hand-back."""

    status: Status | None  # None: release to Pending
    error: str | None = None
    system_line: str | None = None


@dataclass(frozen=True)
class Observed:
    """What the run saw of its trainer's end.

    :param rc: the trainer's exit code (negative: the signal that killed it); None if it
        never started
    :param stopped_by_us: the worker stopped it (cancel, shutdown, a lost lease)
    :param start_error: why it could not start, or ""
    :param cancel_requested: the user asked to cancel the job
    :param stop_reason: the first reason the worker had to stop the run
    :param stderr_tail: the trainer's last stderr lines
    """

    rc: int | None
    stopped_by_us: bool
    start_error: str
    cancel_requested: bool
    stop_reason: StopReason | None
    stderr_tail: Sequence[str] = ()


@dataclass(frozen=True)
class Memory:
    """The memory numbers of a run, to say an out-of-memory ending with them.

    :param estimate: the job's estimated peak on the slot's device, bytes
    :param device: `cpu` or `cuda`
    :param limit: the trainer's RLIMIT_DATA cap, if any
    :param slot_bytes: what the slot holds, if known
    :param oom_killed: the cgroup's OOM-kill count grew during the run
    """

    estimate: int
    device: str
    limit: int | None = None
    slot_bytes: int | None = None
    oom_killed: bool = False


def decide(
    seen: Observed,
    memory: Memory,
    *,
    worker_id: str,
    resumes_from: str | None = None,
    log_error: str | None = None,
) -> Ending:
    """The one decision of a run: how the trainer's end becomes the job's.

    :param resumes_from: a description of the checkpoint a handed-back job resumes from
    :param log_error: why the run's log could not be stored (with StopReason.LOG_FAILED)
    """
    if seen.cancel_requested and (seen.stopped_by_us or seen.rc != protocol.EXIT_SUCCESS):
        return Ending(Status.CANCELLED, "cancelled on request",
                      f"cancelled on request; trainer exit code {seen.rc}")  # fmt: skip
    if seen.stop_reason is StopReason.SHUTDOWN and seen.stopped_by_us:
        where = f"; it resumes from {resumes_from}" if resumes_from else ""
        reason = f"worker {worker_id} shut down during the run; re-queued{where}"
        return Ending(None, reason, reason)
    if seen.stop_reason is StopReason.LOG_FAILED:
        return Ending(Status.FAILED, f"the run's log could not be stored: {log_error}")
    if seen.start_error:
        return Ending(Status.FAILED, seen.start_error, seen.start_error)
    if seen.rc == protocol.EXIT_SUCCESS:
        return Ending(Status.SUCCEEDED)
    out_of_memory = memory_failure(seen, memory)
    if out_of_memory is not None:
        return Ending(Status.FAILED, out_of_memory, out_of_memory)
    return Ending(Status.FAILED, failure_text(seen.rc, seen.stderr_tail))


def memory_failure(seen: Observed, memory: Memory) -> str | None:
    """An ending that was the run's memory running out, said with the numbers."""
    numbers = f"estimated peak {human(memory.estimate)} on {memory.device}"
    if memory.limit is not None:
        numbers += f", limit {human(memory.limit)} (RLIMIT_DATA)"
    if memory.slot_bytes is not None:
        numbers += f", the slot holds {human(memory.slot_bytes)}"
    last = [line for line in seen.stderr_tail if line.strip()]
    if seen.rc == protocol.EXIT_OUT_OF_MEMORY:
        said = last[-1].removeprefix("error: ") if last else "an allocation failed"
        return f"out of memory: {said} ({numbers})"
    if seen.rc == -signal.SIGKILL and not seen.stopped_by_us:
        if memory.oom_killed:
            return f"out of memory: the kernel's OOM killer ended the trainer ({numbers})"
        return (
            "killed by SIGKILL, not by gatequeue: most likely out of memory, by the "
            f"kernel's OOM killer ({numbers})"
        )
    if seen.rc == -signal.SIGABRT and memory.limit is not None:
        return f"aborted (SIGABRT) under its memory limit: most likely out of memory ({numbers})"
    return None


def failure_text(rc: int | None, stderr_tail: Sequence[str]) -> str:
    """A failed run's `error`: the trainer's last words, and the signal that killed it."""
    lines = [line for line in stderr_tail if line.strip()]
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        lines.append(f"(the trainer was killed by {name})")
    text = "\n".join(lines) or f"the trainer exited with code {rc}"
    return text[-ERROR_MAX_CHARS:]


def describe_circuit(circuit: Circuit) -> str:
    """The log's line for a run's circuit: what a researcher checks before using it."""
    check = (
        "verified against the network"
        if circuit.verified
        else f"NOT verified: {circuit.disagreements} test samples disagree with the network"
    )
    return (
        f"circuit: {circuit.gatesLive:,} of {circuit.gates:,} gates live, depth "
        f"{circuit.depth}, {circuit.imagesPerS:,.0f} images/s on one core; {check}"
    )


def oom_kill_count(events: Path = MEMORY_EVENTS) -> int:
    """How many processes the kernel's OOM killer has ended in this cgroup (v2), 0 where it
    cannot be read: compared before and after a run that died of SIGKILL."""
    try:
        for line in events.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0

"""How a run's end becomes the job's (service/worker/ending.py), on plain values: no
MongoDB, no process."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from service.jobs.record import Circuit
from service.jobs.status import Status
from service.worker.ending import (
    ERROR_MAX_CHARS,
    Memory,
    Observed,
    StopReason,
    decide,
    describe_circuit,
    failure_text,
    oom_kill_count,
)
from trainer import protocol

GIB = 1 << 30
MEMORY = Memory(estimate=2 * GIB, device="cpu", limit=3 * GIB, slot_bytes=8 * GIB)


def seen(rc: int | None = 0, **changes: object) -> Observed:
    fields: dict[str, object] = {
        "rc": rc, "stopped_by_us": False, "start_error": "", "cancel_requested": False,
        "stop_reason": None, "stderr_tail": (),
    }  # fmt: skip
    fields.update(changes)
    return Observed(**fields)  # type: ignore[arg-type]


def test_exit_0_succeeds() -> None:
    assert decide(seen(0), MEMORY, worker_id="w").status is Status.SUCCEEDED


def test_a_cancel_wins_over_everything_but_a_run_that_finished_by_itself() -> None:
    ending = decide(
        seen(-15, stopped_by_us=True, cancel_requested=True, stop_reason=StopReason.CANCEL),
        MEMORY, worker_id="w",
    )  # fmt: skip
    assert ending.status is Status.CANCELLED and ending.error == "cancelled on request"
    assert ending.system_line == "cancelled on request; trainer exit code -15"
    # The trainer exited 0 before the cancel reached it: the run stands.
    late = decide(seen(0, cancel_requested=True), MEMORY, worker_id="w")
    assert late.status is Status.SUCCEEDED


def test_a_shutdown_hands_the_job_back_naming_its_checkpoint() -> None:
    ending = decide(
        seen(protocol.EXIT_CHECKPOINTED, stopped_by_us=True, stop_reason=StopReason.SHUTDOWN),
        MEMORY, worker_id="w1", resumes_from="the checkpoint of epoch 3",
    )  # fmt: skip
    assert ending.status is None
    assert ending.error == (
        "worker w1 shut down during the run; re-queued; it resumes from the checkpoint of epoch 3"
    )
    # A trainer that finished within the shutdown's grace ends as it would have anyway.
    finished = decide(seen(0, stop_reason=StopReason.SHUTDOWN), MEMORY, worker_id="w1")
    assert finished.status is Status.SUCCEEDED


def test_lost_logs_and_start_errors_fail_the_run() -> None:
    logs = decide(
        seen(0, stop_reason=StopReason.LOG_FAILED), MEMORY, worker_id="w", log_error="disk"
    )
    assert logs.status is Status.FAILED and logs.error == "the run's log could not be stored: disk"
    start = decide(seen(None, start_error="cannot start 'x'"), MEMORY, worker_id="w")
    assert (start.status, start.error, start.system_line) == (
        Status.FAILED, "cannot start 'x'", "cannot start 'x'",
    )  # fmt: skip


def test_out_of_memory_is_said_with_the_numbers() -> None:
    tail = ["loading", "error: out of memory: can't allocate memory: 4 GiB"]
    ending = decide(seen(protocol.EXIT_OUT_OF_MEMORY, stderr_tail=tail), MEMORY, worker_id="w")
    assert ending.status is Status.FAILED
    assert ending.error == (
        "out of memory: out of memory: can't allocate memory: 4 GiB (estimated peak 2.0 GiB "
        "on cpu, limit 3.0 GiB (RLIMIT_DATA), the slot holds 8.0 GiB)"
    )


@pytest.mark.parametrize(
    ("oom_killed", "start"),
    [(True, "out of memory: the kernel's OOM killer"), (False, "killed by SIGKILL, not by")],
)
def test_a_sigkill_we_did_not_send_is_likely_memory(oom_killed: bool, start: str) -> None:
    memory = Memory(estimate=GIB, device="cuda", oom_killed=oom_killed)
    ending = decide(seen(-signal.SIGKILL), memory, worker_id="w")
    assert ending.status is Status.FAILED and ending.error is not None
    assert ending.error.startswith(start) and "estimated peak 1.0 GiB on cuda" in ending.error
    ours = decide(
        seen(-signal.SIGKILL, stopped_by_us=True, stop_reason=StopReason.LOST), memory,
        worker_id="w",
    )  # fmt: skip
    assert ours.error == "(the trainer was killed by SIGKILL)"


def test_a_failure_says_the_trainers_last_words_and_its_signal() -> None:
    assert failure_text(1, ["", "Traceback", "ValueError: x", " "]) == "Traceback\nValueError: x"
    assert failure_text(3, []) == "the trainer exited with code 3"
    assert failure_text(-signal.SIGSEGV, []) == "(the trainer was killed by SIGSEGV)"
    assert failure_text(-99, []) == "(the trainer was killed by signal 99)"
    assert len(failure_text(1, ["x" * 10_000])) == ERROR_MAX_CHARS


def test_a_circuit_is_described_for_the_log() -> None:
    circuit = Circuit(gates=1000, gatesLive=544, depth=2, imagesPerS=1234567.8, verified=False,
                      disagreements=3, gateHistogram={})  # fmt: skip
    assert describe_circuit(circuit) == (
        "circuit: 544 of 1,000 gates live, depth 2, 1,234,568 images/s on one core; "
        "NOT verified: 3 test samples disagree with the network"
    )


def test_the_oom_kill_count_reads_the_cgroups_events(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    assert oom_kill_count(events) == 2
    assert oom_kill_count(tmp_path / "missing") == 0

"""The one retry policy (service.retry): the schedule of a `Backoff`, what `retry()` tries
again and when it gives up, and the failures in a row of a loop that lives on (`Failures`).
Policies with no delay keep these tests free of sleeps."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from service.retry import Backoff, Failures, retry

NOW = Backoff(initial_s=0.0, max_s=0.0)


class Flaky:
    """Fails with the given errors, one per call, then answers `done`."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_delays_grow_by_factor_up_to_the_cap_within_the_jitter() -> None:
    policy = Backoff(initial_s=1.0, max_s=5.0, factor=2.0, jitter=0.25)
    delays = policy.delays()
    for base in (1.0, 2.0, 4.0, 5.0, 5.0, 5.0):
        assert base * 0.75 <= next(delays) <= base * 1.25


def test_jitter_spreads_the_delays() -> None:
    """Two workers retrying after the same election do not retry in step."""
    firsts = {next(Backoff(initial_s=1.0, jitter=0.2).delays()) for _ in range(20)}
    assert len(firsts) > 1


async def test_retry_tries_again_after_a_pymongo_error() -> None:
    op = Flaky(AutoReconnect("blip"), AutoReconnect("blip"))
    seen: list[float] = []
    assert await retry(op, policy=NOW, on_error=lambda exc, delay: seen.append(delay)) == "done"
    assert op.calls == 3
    assert seen == [0.0, 0.0]


async def test_retry_does_not_catch_other_errors() -> None:
    op = Flaky(ValueError("a bug"))
    with pytest.raises(ValueError):
        await retry(op, policy=NOW)
    assert op.calls == 1


async def test_retry_if_narrows_what_is_tried_again() -> None:
    """`retry_if` picks among the `retry_on` errors: here, only those whose outcome is unknown."""
    unknown = Flaky(AutoReconnect("reply lost"))
    assert await retry(unknown, policy=NOW, retry_if=lambda e: isinstance(e, AutoReconnect))
    refused = Flaky(OperationFailure("refused"))
    with pytest.raises(OperationFailure):
        await retry(refused, policy=NOW, retry_if=lambda e: isinstance(e, AutoReconnect))
    assert refused.calls == 1


async def test_retry_gives_up_after_attempts() -> None:
    op = Flaky(*(AutoReconnect(str(i)) for i in range(5)))
    with pytest.raises(AutoReconnect, match="2"):
        await retry(op, policy=NOW, attempts=3)
    assert op.calls == 3


async def test_retry_gives_up_when_the_next_try_would_start_after_the_deadline() -> None:
    op = Flaky(AutoReconnect("down"), AutoReconnect("down"))
    with pytest.raises(AutoReconnect):
        await retry(op, policy=NOW, deadline=time.monotonic())
    assert op.calls == 1


async def test_a_moving_deadline_is_read_after_each_error() -> None:
    """A lease renewed while its run retries: the retry goes on to the new deadline."""
    deadlines = [time.monotonic() + 3600, time.monotonic() + 3600, time.monotonic()]
    op = Flaky(*(AutoReconnect("down") for _ in range(5)))
    with pytest.raises(AutoReconnect):
        await retry(op, policy=NOW, deadline=lambda: deadlines.pop(0))
    assert op.calls == 3


def test_failures_count_in_a_row_and_start_over_after_a_success() -> None:
    failures = Failures(Backoff(initial_s=1.0, max_s=8.0, jitter=0.0), attempts=3)
    assert [failures.failed() for _ in range(3)] == [1.0, 2.0, 4.0]
    assert not failures.exhausted
    failures.failed()
    assert failures.exhausted  # a fourth failure in a row: give up
    failures.reset()
    assert (failures.failed(), failures.exhausted) == (1.0, False)


def test_failures_without_attempts_never_give_up() -> None:
    failures = Failures(Backoff(initial_s=1.0, max_s=2.0, jitter=0.0))
    assert [failures.failed() for _ in range(50)][-1] == 2.0
    assert not failures.exhausted


def test_the_client_side_imports_no_pymongo() -> None:
    """The asyncio client takes its reconnect schedule from here; it must not pay for
    PyMongo's import (the `gatequeue` client commands start with it)."""
    code = "import sys, service.client; sys.exit('pymongo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

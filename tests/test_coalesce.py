"""service.coalesce and the caches built on it: concurrent callers share one read."""

from __future__ import annotations

import asyncio

import pytest

from service.api.capacity import SlotCache
from service.coalesce import Coalesced
from service.store.workers import SlotCapacity


class Gate:
    """A read that waits for the test's go, counting how often it was started."""

    def __init__(self, result: object = 7, fail_first: bool = False) -> None:
        self.calls = 0
        self.go = asyncio.Event()
        self.result = result
        self.fail_first = fail_first

    async def read(self) -> object:
        self.calls += 1
        await self.go.wait()
        if self.fail_first and self.calls == 1:
            raise ConnectionError("MongoDB is away")
        return self.result


async def test_callers_that_arrive_during_a_read_share_it() -> None:
    gate = Gate()
    read = Coalesced(gate.read)
    callers = [asyncio.create_task(read()) for _ in range(20)]
    await asyncio.sleep(0)
    gate.go.set()
    assert await asyncio.gather(*callers) == [7] * 20
    assert gate.calls == 1
    assert await read() == 7 and gate.calls == 2  # a later call reads again


async def test_a_failed_read_fails_its_callers_and_the_next_call_reads_again() -> None:
    gate = Gate(fail_first=True)
    read = Coalesced(gate.read)
    callers = [asyncio.create_task(read()) for _ in range(3)]
    await asyncio.sleep(0)
    gate.go.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await read() == 7 and gate.calls == 2


async def test_a_cancelled_caller_does_not_cancel_the_read_of_the_others() -> None:
    gate = Gate()
    read = Coalesced(gate.read)
    first, second = asyncio.create_task(read()), asyncio.create_task(read())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.go.set()
    assert await second == 7 and gate.calls == 1


class Workers:
    def __init__(self) -> None:
        self.gate = Gate(result=[SlotCapacity(worker_id="w", gpu="0", memory_bytes=1 << 30)])

    async def live_slots(self) -> object:
        return await self.gate.read()


async def test_the_slot_cache_reads_the_workers_once_for_a_burst_of_submissions() -> None:
    workers = Workers()
    cache = SlotCache(workers)  # type: ignore[arg-type]
    callers = [asyncio.create_task(cache.slots()) for _ in range(64)]
    await asyncio.sleep(0)
    workers.gate.go.set()
    assert await asyncio.gather(*callers) == [[("cuda", 1 << 30)]] * 64
    assert workers.gate.calls == 1
    assert await cache.slots() == [("cuda", 1 << 30)] and workers.gate.calls == 1  # cached

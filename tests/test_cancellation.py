"""`cancel_and_wait` ends tasks whose cancellation was lost, as Python 3.11's
`asyncio.wait_for` (used by PyMongo's network layer) can lose one (CPython gh-86296)."""

from __future__ import annotations

import asyncio

from pymongo import AsyncMongoClient

from service.cancellation import cancel_and_wait


async def test_a_task_that_loses_cancellations_still_ends() -> None:
    delivered = 0

    async def stubborn() -> None:
        nonlocal delivered
        for _ in range(3):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                delivered += 1  # swallowed, as a lost cancellation is
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task)
    assert task.cancelled()
    assert delivered == 3


async def test_outcomes_are_consumed() -> None:
    async def boom() -> None:
        raise RuntimeError("x")

    async def fine() -> int:
        return 1

    done = asyncio.create_task(boom())
    ok = asyncio.create_task(fine())
    await asyncio.sleep(0)
    await cancel_and_wait(done, ok)  # already finished: nothing to cancel, nothing raised
    assert done.done() and ok.result() == 1


async def test_change_streams_cancelled_just_after_opening_end(
    mongo_client: AsyncMongoClient, db_name: str
) -> None:
    """The window that loses cancellations on 3.11 is the first getMore's send, a few ms
    after the stream opens; sweep cancellations across it."""
    coll = mongo_client[db_name]["jobs"]
    await coll.insert_one({"x": 1})

    async def follow() -> None:
        async with await coll.watch([{"$match": {"operationType": "insert"}}]) as stream:
            async for _ in stream:
                pass

    async with asyncio.timeout(60):
        for i in range(36):
            task = asyncio.create_task(follow())
            await asyncio.sleep((i % 6) * 0.0005)
            await cancel_and_wait(task)
            assert task.done()

"""The worker's change stream when its history is gone: a resume token that fell off the
change log (error 286: the embedded server's log trimmed, as an oplog rolls over) and an
`invalidate` (the collection dropped). No Pending job is missed, and the stream is opened
again exactly once: nothing spins.
"""

from __future__ import annotations

from wire_proxy import WireProxy
from worker_helpers import (
    MakeWorker,
    eventually,
    finished,
    insert,
    stopped_with_token,
    trainer,
    wait_job,
)

from service.store import Store


async def _trim_change_log(store: Store) -> None:
    await store.client.admin.command({"gatequeueTrimChangeLog": 1, "keep": 0})


async def test_a_stored_token_that_fell_off_the_change_log(
    store: Store, make_worker: MakeWorker
) -> None:
    missed = await stopped_with_token(store, make_worker, "steady")
    await _trim_change_log(store)
    second = await make_worker(worker_id="steady", trainer_cmd=trainer("epochs"))
    assert not second.feed.resumed_from_token
    assert second.feed.token_fallbacks == 1
    for job in missed:
        done = await wait_job(store, job.id, finished)
        assert done.status == "Succeeded" and done.attempt == 1
    assert second.feed.opens == 1


async def test_history_lost_while_the_worker_was_cut_off(
    store: Store, make_worker: MakeWorker, mongo_uri: str
) -> None:
    """The oplog rolls over during a partition: when the worker's stream comes back, its
    resume point is gone (286); it starts afresh and its catch-up finds what was missed."""
    async with WireProxy.for_uri(mongo_uri) as proxy:
        worker = await make_worker(
            uri=proxy.uri(serverSelectionTimeoutMS=500), trainer_cmd=trainer("epochs")
        )
        job = await insert(store)
        await wait_job(store, job.id, finished)
        opens = worker.feed.opens
        proxy.refuse()
        missed = [await insert(store) for _ in range(3)]
        await _trim_change_log(store)
        proxy.heal()
        for job in missed:
            done = await wait_job(store, job.id, finished, deadline_s=60)
            assert done.status == "Succeeded" and done.attempt == 1
        # The catch-up can run the missed jobs before the stream is open again (a warm
        # trainer runs one in milliseconds): wait for the re-open, then count it.
        await eventually(lambda: _opened(worker.feed, opens + 1))
        assert worker.feed.token_fallbacks == 1
        assert worker.feed.opens == opens + 1


async def test_an_invalidated_stream_is_opened_afresh(
    store: Store, make_worker: MakeWorker
) -> None:
    worker = await make_worker(trainer_cmd=trainer("epochs"))
    job = await insert(store)
    await wait_job(store, job.id, finished)
    opens = worker.feed.opens
    await store.jobs.collection.drop()  # ends every stream on `jobs` with `invalidate`
    await eventually(lambda: _opened(worker.feed, opens + 1))
    await store.ensure_indexes()
    late = await insert(store)
    done = await wait_job(store, late.id, finished)
    assert done.status == "Succeeded"
    assert worker.feed.invalidations == 1
    assert worker.feed.opens == opens + 1


async def _opened(feed: object, n: int) -> bool:
    return getattr(feed, "opens", 0) >= n

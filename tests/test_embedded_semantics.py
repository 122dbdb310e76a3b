"""The embedded server behaves as mongod where gatequeue's reliability depends on it.

Each test pins one behaviour that a bare mongo-java-server gets wrong or lacks and the launcher
provides (docs/embedded-mongo.md, "Gaps"): bounded replies, the server's clock in writes and
queries, pipeline updates, fail points, error labels, retryable writes under a lost reply,
change-log trimming and invalidation. The expected values are mongod's.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import bson
import pytest
from bson import Int64, Timestamp
from pymongo import AsyncMongoClient, ReturnDocument, monitoring
from pymongo.errors import (
    AutoReconnect,
    OperationFailure,
    WriteConcernError,
    WriteError,
)

from service.mongo import embedded as embedded_mongo
from service.mongo.embedded import EmbeddedMongo

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None
    or (shutil.which("mvn") is None and embedded_mongo.cached_jar() is None),
    reason="the embedded MongoDB server needs java (and mvn for its first build)",
)

MIB = 1024 * 1024
# What a batch of documents may hold (16 MiB), plus the reply's own fields around it.
REPLY_CAP = 16 * MIB + 16 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedMongo]:
    mongo = EmbeddedMongo()
    mongo.start()
    yield mongo
    mongo.stop()


class _Listener(monitoring.CommandListener):
    """Every command the client sent and every reply it got, in order."""

    def __init__(self) -> None:
        self.started_events: list[monitoring.CommandStartedEvent] = []
        self.succeeded_events: list[monitoring.CommandSucceededEvent] = []
        self.failed_events: list[monitoring.CommandFailedEvent] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.started_events.append(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.succeeded_events.append(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.failed_events.append(event)

    def named(self, name: str) -> list[monitoring.CommandStartedEvent]:
        return [e for e in self.started_events if e.command_name == name]

    def replies(self, *names: str) -> list[dict[str, Any]]:
        return [e.reply for e in self.succeeded_events if e.command_name in names]


@pytest.fixture
async def listener() -> _Listener:
    return _Listener()


@pytest.fixture
async def client(server: EmbeddedMongo, listener: _Listener) -> AsyncIterator[AsyncMongoClient]:
    client: AsyncMongoClient = AsyncMongoClient(
        server.uri, serverSelectionTimeoutMS=10_000, event_listeners=[listener]
    )
    yield client
    await client.admin.command("configureFailPoint", "failCommand", mode="off")
    await client.admin.command("configureFailPoint", "onPrimaryTransactionalWrite", mode="off")
    await client.close()


@pytest.fixture
def db_name() -> str:
    return f"semantics_{uuid.uuid4().hex[:10]}"


async def _collect(stream: Any, n: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        async for event in stream:
            events.append(event)
            if len(events) == n:
                break
    return events


def _batch(reply: dict[str, Any]) -> list[Any]:
    cursor = reply["cursor"]
    return cursor["firstBatch"] if "firstBatch" in cursor else cursor["nextBatch"]


# ------------------------------------------------------------------ bounded replies


@pytest.fixture(scope="module")
async def log_lines(server: EmbeddedMongo) -> AsyncIterator[str]:
    """~55 MB of job_logs: 1,200 batches of 500 lines (600,000 lines), as a long run writes."""
    db_name = f"semantics_logs_{uuid.uuid4().hex[:8]}"
    client: AsyncMongoClient = AsyncMongoClient(server.uri)
    line = "step 000123 loss 0.693147 acc 0.5012 lr 0.0100 gates 64000 tau 1.00 | " + "x" * 20
    docs = [{"jobId": "j1", "seq": seq, "lines": [line] * 500} for seq in range(1_200)]
    await client[db_name].job_logs.insert_many(docs)
    yield db_name
    await client.drop_database(db_name)
    await client.close()


async def test_find_of_55_mb_comes_in_mongod_batches(
    client: AsyncMongoClient, listener: _Listener, log_lines: str
) -> None:
    logs = client[log_lines].job_logs
    seqs = [d["seq"] async for d in logs.find({"jobId": "j1"}).sort("seq", 1)]
    assert seqs == list(range(1_200))
    replies = listener.replies("find", "getMore")
    sizes = [len(bson.encode(r)) for r in replies]
    assert sum(sizes) > 48_000_000  # one reply of it all is what PyMongo refused
    assert max(sizes) <= REPLY_CAP
    # First batch: 101 documents when no batchSize is given; getMores: 16 MiB each.
    assert len(_batch(replies[0])) == 101
    assert all(size > 15 * MIB for size in sizes[1:-1])
    assert sum(len(_batch(r)) for r in replies) == 1_200


async def test_find_with_a_batch_size_is_still_capped_at_16_mib(
    client: AsyncMongoClient, listener: _Listener, log_lines: str
) -> None:
    logs = client[log_lines].job_logs
    n = len([d async for d in logs.find({}, batch_size=250)])
    assert n == 1_200
    replies = listener.replies("find", "getMore")
    assert [len(_batch(r)) for r in replies[:-1]] == [250] * (len(replies) - 1)
    assert [e.command.get("batchSize") for e in listener.named("getMore")] == [250] * (
        len(replies) - 1
    )

    listener.succeeded_events.clear()
    n = len([d async for d in logs.find({}, batch_size=1_000)])
    assert n == 1_200
    replies = listener.replies("find", "getMore")
    first = len(_batch(replies[0]))
    assert 300 < first < 1_000  # 1,000 of these are ~45 MB: the 16 MiB cap cut the batch
    assert max(len(bson.encode(r)) for r in replies) <= REPLY_CAP


async def test_aggregate_and_single_batch_replies(
    client: AsyncMongoClient, listener: _Listener, log_lines: str
) -> None:
    logs = client[log_lines].job_logs
    docs = [
        d async for d in await logs.aggregate([{"$match": {"jobId": "j1"}}, {"$sort": {"seq": -1}}])
    ]
    assert [d["seq"] for d in docs[:3]] == [1_199, 1_198, 1_197]
    assert len(docs) == 1_200
    replies = listener.replies("aggregate", "getMore")
    assert len(_batch(replies[0])) == 101
    assert max(len(bson.encode(r)) for r in replies) <= REPLY_CAP

    # batchSize 0: an empty first batch and an open cursor, as mongod answers.
    reply = await client[log_lines].command(
        {"aggregate": "job_logs", "pipeline": [], "cursor": {"batchSize": 0}}
    )
    assert reply["cursor"]["firstBatch"] == [] and reply["cursor"]["id"] != 0
    await client[log_lines].command({"killCursors": "job_logs", "cursors": [reply["cursor"]["id"]]})
    # limit, and a single batch (a negative limit in PyMongo) closes the cursor.
    assert len([d async for d in logs.find({}, limit=7)]) == 7
    reply = await client[log_lines].command(
        {"find": "job_logs", "filter": {}, "batchSize": 3, "singleBatch": True}
    )
    assert len(reply["cursor"]["firstBatch"]) == 3 and reply["cursor"]["id"] == 0
    with pytest.raises(OperationFailure) as negative:
        await client[log_lines].command({"find": "job_logs", "batchSize": -1})
    assert negative.value.code == 51024


async def test_getmore_belongs_to_its_namespace(client: AsyncMongoClient, log_lines: str) -> None:
    db = client[log_lines]
    reply = await db.command({"find": "job_logs", "batchSize": 2})
    cursor_id = reply["cursor"]["id"]
    with pytest.raises(OperationFailure) as other:
        await db.command({"getMore": Int64(cursor_id), "collection": "jobs"})
    assert other.value.code == 13
    more = await db.command({"getMore": Int64(cursor_id), "collection": "job_logs", "batchSize": 2})
    assert len(more["cursor"]["nextBatch"]) == 2
    killed = await db.command({"killCursors": "job_logs", "cursors": [Int64(cursor_id)]})
    assert killed["cursorsKilled"] == [cursor_id]
    with pytest.raises(OperationFailure) as gone:
        await db.command({"getMore": Int64(cursor_id), "collection": "job_logs"})
    assert gone.value.code == 43


async def test_change_stream_batches_are_capped_too(
    client: AsyncMongoClient, listener: _Listener, db_name: str
) -> None:
    coll = client[db_name].big
    async with await coll.watch() as stream:
        await coll.insert_many([{"i": i, "pad": "p" * MIB} for i in range(24)])
        events = await _collect(stream, 24)
    assert [e["fullDocument"]["i"] for e in events] == list(range(24))
    batches = [r for r in listener.replies("getMore") if _batch(r)]
    assert len(batches) >= 2  # 24 MiB of events do not fit one reply
    assert max(len(bson.encode(r)) for r in batches) <= REPLY_CAP


# ------------------------------------------------------------------ the server's clock


async def test_expr_with_now_in_find_count_update_delete(
    client: AsyncMongoClient, db_name: str
) -> None:
    jobs = client[db_name].jobs
    past = datetime.datetime(2000, 1, 1)
    future = datetime.datetime(2999, 1, 1)
    await jobs.insert_many(
        [
            {"_id": "expired", "status": "Running", "leaseExpiresAt": past},
            {"_id": "live", "status": "Running", "leaseExpiresAt": future},
            {"_id": "pending", "status": "Pending"},
        ]
    )
    expired = {"status": "Running", "$expr": {"$lt": ["$leaseExpiresAt", "$$NOW"]}}
    assert [d["_id"] async for d in jobs.find(expired)] == ["expired"]
    assert await jobs.count_documents(expired) == 1
    assert (await jobs.database.command({"count": "jobs", "query": expired}))["n"] == 1
    result = await jobs.update_many(expired, {"$set": {"status": "Pending"}})
    assert result.modified_count == 1
    assert await jobs.count_documents({"status": "Pending"}) == 2
    # Outside $expr "$$NOW" is a plain string, as on mongod.
    assert await jobs.count_documents({"status": "$$NOW"}) == 0
    deleted = await jobs.delete_many({"$expr": {"$gt": ["$leaseExpiresAt", "$$NOW"]}})
    assert deleted.deleted_count == 1
    # let: the command's own variables, usable in $expr.
    found = [
        d["_id"]
        async for d in jobs.find(
            {"$expr": {"$eq": ["$status", "$$wanted"]}}, let={"wanted": "Pending"}
        )
    ]
    assert sorted(found) == ["expired", "pending"]


async def test_pipeline_claim_uses_the_servers_clock(
    client: AsyncMongoClient, db_name: str
) -> None:
    jobs = client[db_name].jobs
    await jobs.insert_one(
        {
            "_id": 1,
            "status": "Running",
            "leaseExpiresAt": datetime.datetime(2000, 1, 1),
            "attempt": 2,
        }
    )
    before = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
    claimed = await jobs.find_one_and_update(
        {"_id": 1, "status": "Running", "$expr": {"$lt": ["$leaseExpiresAt", "$$NOW"]}},
        [
            {
                "$set": {
                    "leaseExpiresAt": {"$add": ["$$NOW", 30_000]},
                    "claimedAt": "$$NOW",
                    "attempt": {"$add": [{"$ifNull": ["$attempt", 0]}, 1]},
                    "retries": {"$add": [{"$ifNull": ["$retries", 0]}, 1]},
                    "late": {"$cond": [{"$gt": ["$$NOW", "$leaseExpiresAt"]}, True, False]},
                    "overdueMs": {"$subtract": ["$$NOW", "$leaseExpiresAt"]},
                    "best": {"$max": ["$attempt", 10]},
                }
            },
            {"$unset": "worker"},
        ],
        return_document=ReturnDocument.AFTER,
        projection={"_id": 0},
    )
    after = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert claimed is not None
    assert claimed["leaseExpiresAt"] - claimed["claimedAt"] == datetime.timedelta(seconds=30)
    assert before <= claimed["claimedAt"] <= after
    assert claimed["attempt"] == 3 and claimed["retries"] == 1
    assert claimed["late"] is True and claimed["best"] == 10
    assert claimed["overdueMs"] == (claimed["claimedAt"] - datetime.datetime(2000, 1, 1)) // (
        datetime.timedelta(milliseconds=1)
    )
    assert "_id" not in claimed
    # The lease is live now: the same claim matches nothing.
    again = await jobs.find_one_and_update(
        {"_id": 1, "$expr": {"$lt": ["$leaseExpiresAt", "$$NOW"]}},
        [{"$set": {"claimedAt": "$$NOW"}}],
    )
    assert again is None
    # What was stored is exactly what the client reads back (milliseconds, like a BSON date).
    assert await jobs.count_documents({"claimedAt": claimed["claimedAt"]}) == 1


async def test_now_is_one_value_per_command(client: AsyncMongoClient, db_name: str) -> None:
    jobs = client[db_name].jobs
    await jobs.insert_many([{"n": n} for n in range(300)])
    result = await jobs.update_many({}, [{"$set": {"touchedAt": "$$NOW"}}])
    assert result.modified_count == 300
    assert len(await jobs.distinct("touchedAt")) == 1
    await jobs.update_many({}, {"$currentDate": {"seenAt": True}})
    seen = await jobs.distinct("seenAt")
    assert len(seen) == 1
    assert await jobs.count_documents({"seenAt": seen[0]}) == 300  # millisecond precision
    stamped = await jobs.find_one_and_update(
        {"n": 0},
        {"$currentDate": {"at": {"$type": "date"}, "ts": {"$type": "timestamp"}}, "$set": {"x": 1}},
        return_document=ReturnDocument.AFTER,
    )
    assert isinstance(stamped["at"], datetime.datetime)
    assert isinstance(stamped["ts"], Timestamp) and stamped["ts"].inc > 0
    with pytest.raises(WriteError) as conflict:
        await jobs.update_one({}, {"$set": {"at": 1}, "$currentDate": {"at": True}})
    assert conflict.value.code == 40
    agg = [d async for d in await jobs.aggregate([{"$limit": 2}, {"$project": {"now": "$$NOW"}}])]
    assert agg[0]["now"] == agg[1]["now"]


async def test_pipeline_updates_behave_as_on_mongod(client: AsyncMongoClient, db_name: str) -> None:
    jobs = client[db_name].jobs
    await jobs.insert_many([{"_id": i, "a": i, "b": {"c": i}} for i in range(3)])
    async with await jobs.watch() as stream:
        result = await jobs.update_many(
            {"a": {"$gte": 1}},
            [{"$addFields": {"d": {"$multiply": ["$a", 10]}}}, {"$project": {"b": 0}}],
        )
        assert (result.matched_count, result.modified_count) == (2, 2)
        events = await _collect(stream, 2)
    assert [e["operationType"] for e in events] == ["update", "update"]
    assert events[0]["updateDescription"]["updatedFields"] == {"d": 10}
    assert events[0]["updateDescription"]["removedFields"] == ["b"]
    assert await jobs.find_one({"_id": 1}) == {"_id": 1, "a": 1, "d": 10}

    # $replaceWith keeps _id; nothing changed means matched but not modified.
    await jobs.update_one({"_id": 2}, [{"$replaceWith": {"a": "$a", "d": "$d"}}])
    assert await jobs.find_one({"_id": 2}) == {"_id": 2, "a": 2, "d": 20}
    same = await jobs.update_one({"_id": 2}, [{"$set": {"a": 2}}])
    assert (same.matched_count, same.modified_count) == (1, 0)
    # c: constants of the statement; upsert: the query's equality fields, then the pipeline.
    up = await jobs.database.command(
        {
            "update": "jobs",
            "updates": [
                {
                    "q": {"_id": 7, "kind": "x"},
                    "u": [{"$set": {"v": "$$k"}}],
                    "c": {"k": 5},
                    "upsert": True,
                }
            ],
        }
    )
    assert up["upserted"] == [{"index": 0, "_id": 7}]
    assert await jobs.find_one({"_id": 7}) == {"_id": 7, "kind": "x", "v": 5}

    with pytest.raises(WriteError) as immutable:
        await jobs.update_one({"_id": 0}, [{"$set": {"_id": 99}}])
    assert immutable.value.code == 66
    with pytest.raises(WriteError) as stage:
        await jobs.update_one({"_id": 0}, [{"$match": {}}])
    assert stage.value.code == 72
    with pytest.raises(OperationFailure) as fam_stage:
        await jobs.find_one_and_update({"_id": 0}, [{"$group": {"_id": None}}])
    assert fam_stage.value.code == 72
    upserted = await jobs.find_one_and_update(
        {"_id": 8},
        [{"$set": {"at": "$$NOW"}}],
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert (
        upserted is not None
        and upserted["_id"] == 8
        and isinstance(upserted["at"], datetime.datetime)
    )


async def test_array_literals_are_evaluated_element_by_element(
    client: AsyncMongoClient, db_name: str
) -> None:
    """mongod evaluates the elements of an array literal as expressions; the bare library
    stores them as they are (`"$_id"` as a string, `$$NOW` unevaluated). Operator argument
    lists are syntax, not arrays."""
    sweeps = client[db_name].sweeps
    await sweeps.insert_one({"_id": 1, "running": [], "n": 2})
    await sweeps.update_one(
        {"_id": 1},
        [{"$set": {
            "running": {"$concatArrays": ["$running", [{"id": "$_id", "at": "$$NOW"}]]},
            "pair": ["$n", {"$add": ["$n", 1]}, "plain"],
            "kind": {"$cond": {"if": {"$eq": ["$n", 2]}, "then": ["$n"], "else": []}},
            "constant": [1, "two", [3]],
        }}],
    )  # fmt: skip
    doc = await sweeps.find_one({"_id": 1})
    assert doc is not None
    assert doc["running"][0]["id"] == 1
    assert isinstance(doc["running"][0]["at"], datetime.datetime)
    assert doc["pair"] == [2, 3, "plain"]
    assert doc["kind"] == [2]
    assert doc["constant"] == [1, "two", [3]]


# ------------------------------------------------------------------ fail points


async def _fail(client: AsyncMongoClient, mode: Any, **data: Any) -> None:
    await client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})


async def test_fail_command_modes_and_filters(
    client: AsyncMongoClient, server: EmbeddedMongo, db_name: str
) -> None:
    coll = client[db_name].c
    await coll.insert_one({"_id": 1})
    await _fail(client, {"times": 2}, failCommands=["count"], errorCode=2, errorLabels=["Custom"])
    for _ in range(2):
        with pytest.raises(OperationFailure) as failed:
            await client[db_name].command("count", "c")
        assert failed.value.code == 2
        assert failed.value.details["errmsg"] == "Failing command via 'failCommand' failpoint"
        assert failed.value.has_error_label("Custom")
    assert (await client[db_name].command("count", "c"))["n"] == 1

    await _fail(client, {"skip": 1}, failCommands=["count"], errorCode=8)
    assert (await client[db_name].command("count", "c"))["n"] == 1
    with pytest.raises(OperationFailure) as skipped:
        await client[db_name].command("count", "c")
    assert skipped.value.code == 8 and skipped.value.details["codeName"] == "UnknownError"

    # appName: only that application's connections fail.
    await _fail(client, "alwaysOn", failCommands=["count"], errorCode=8, appName="other")
    assert (await client[db_name].command("count", "c"))["n"] == 1
    other: AsyncMongoClient = AsyncMongoClient(server.uri, appName="other")
    try:
        with pytest.raises(OperationFailure):
            await other[db_name].command("count", "c")
    finally:
        await other.close()
    await _fail(client, "off")
    assert (await client[db_name].command("count", "c"))["n"] == 1

    with pytest.raises(OperationFailure) as unknown:
        await client.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="alwaysOn")
    assert unknown.value.code == 2


async def test_close_connection_and_block_connection(
    client: AsyncMongoClient, server: EmbeddedMongo, db_name: str
) -> None:
    no_retry: AsyncMongoClient = AsyncMongoClient(server.uri, retryReads=False, appName="closer")
    blocked: AsyncMongoClient = AsyncMongoClient(server.uri, appName="blocked")
    try:
        await no_retry.admin.command("ping")
        await _fail(
            client, {"times": 1}, failCommands=["find"], closeConnection=True, appName="closer"
        )
        with pytest.raises(AutoReconnect):
            await no_retry[db_name].c.find_one({})
        assert await no_retry[db_name].c.find_one({}) is None

        # A blocked connection holds no server thread: others are answered meanwhile.
        await blocked.admin.command("ping")
        await _fail(
            client,
            {"times": 1},
            failCommands=["find"],
            blockConnection=True,
            blockTimeMS=60_000,
            appName="blocked",
        )
        waiting = asyncio.create_task(blocked[db_name].c.find_one({}))
        for _ in range(20):
            assert (await client.admin.command("ping"))["ok"] == 1.0
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

        # blockConnection with an error: the error once the wait is over.
        await _fail(
            client,
            {"times": 1},
            failCommands=["count"],
            blockConnection=True,
            blockTimeMS=10,
            errorCode=2,
        )
        with pytest.raises(OperationFailure) as after_block:
            await client[db_name].command("count", "c")
        assert after_block.value.code == 2
    finally:
        await no_retry.close()
        await blocked.close()


async def test_write_concern_error_is_applied_then_reported(
    client: AsyncMongoClient, server: EmbeddedMongo, listener: _Listener, db_name: str
) -> None:
    counters = client[db_name].counters
    await counters.insert_one({"_id": 1, "n": 0})
    # Without retries the caller sees the error, yet the write happened: outcome unknown.
    once: AsyncMongoClient = AsyncMongoClient(server.uri, retryWrites=False)
    try:
        await _fail(
            client,
            {"times": 1},
            failCommands=["findAndModify"],
            writeConcernError={"code": 64, "errmsg": "waiting for replication timed out"},
        )
        with pytest.raises(WriteConcernError) as wce:
            await once[db_name].counters.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})
        assert wce.value.code == 64
        assert (await counters.find_one({"_id": 1}))["n"] == 1
    finally:
        await once.close()

    # A retryable code: the server labels it RetryableWriteError, PyMongo resends the same
    # (lsid, txnNumber), and the resend gets the first result without applying it again.
    await _fail(
        client,
        {"times": 1},
        failCommands=["findAndModify"],
        writeConcernError={"code": 91, "errmsg": "Replication is being shut down"},
    )
    listener.started_events.clear()
    listener.succeeded_events.clear()
    before = await counters.find_one_and_update(
        {"_id": 1}, [{"$set": {"n": {"$add": ["$n", 1]}}}], return_document=ReturnDocument.BEFORE
    )
    assert before == {"_id": 1, "n": 1}
    assert (await counters.find_one({"_id": 1}))["n"] == 2
    attempts = listener.named("findAndModify")
    assert len(attempts) == 2
    assert attempts[0].command["txnNumber"] == attempts[1].command["txnNumber"]
    # PyMongo reports the reply with the write concern error as a failed command: its
    # writeConcernError and the labels the server put on it.
    (failed,) = [e for e in listener.failed_events if e.command_name == "findAndModify"]
    assert failed.failure["code"] == 91
    assert failed.failure["errorLabels"] == ["RetryableWriteError"]
    (second,) = listener.replies("findAndModify")
    assert "writeConcernError" not in second and second["retriedStmtId"] == 0
    assert second["value"] == {"_id": 1, "n": 1}


async def test_lost_reply_retry_applies_once(
    client: AsyncMongoClient, listener: _Listener, db_name: str
) -> None:
    """onPrimaryTransactionalWrite: applied and recorded, then the connection drops."""
    counters = client[db_name].counters
    await counters.insert_one({"_id": 1, "n": 0})
    writes = [
        lambda: counters.update_one({"_id": 1}, {"$inc": {"n": 1}}),
        lambda: counters.update_one({"_id": 1}, [{"$set": {"n": {"$add": ["$n", 1]}}}]),
        lambda: counters.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}),
        lambda: counters.find_one_and_update({"_id": 1}, [{"$set": {"n": {"$add": ["$n", 1]}}}]),
    ]
    for expected, write in enumerate(writes, start=1):
        await client.admin.command(
            "configureFailPoint", "onPrimaryTransactionalWrite", mode={"times": 1}
        )
        listener.started_events.clear()
        await write()
        assert (await counters.find_one({"_id": 1}))["n"] == expected
        names = {"update", "findAndModify"}
        attempts = [e for e in listener.started_events if e.command_name in names]
        assert (
            len(attempts) == 2
            and attempts[0].command["txnNumber"] == attempts[1].command["txnNumber"]
        )

    # failBeforeCommitExceptionCode: the first attempt is not applied; the retry is, once.
    await client.admin.command(
        "configureFailPoint",
        "onPrimaryTransactionalWrite",
        mode={"times": 1},
        data={"failBeforeCommitExceptionCode": 1},
    )
    await client[db_name].logs.insert_one({"_id": "a"})
    assert await client[db_name].logs.count_documents({}) == 1


async def test_resent_writes_get_the_first_answer(client: AsyncMongoClient, db_name: str) -> None:
    db = client[db_name]
    await db.counters.insert_one({"_id": 1, "n": 0})
    commands = [
        {"insert": "logs", "documents": [{"_id": 1}, {"_id": 2}]},
        {"update": "counters", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}]},
        {
            "update": "counters",
            "updates": [{"q": {"_id": 1}, "u": [{"$set": {"n": {"$add": ["$n", 1]}}}]}],
        },
        {
            "findAndModify": "counters",
            "query": {"_id": 1},
            "update": {"$inc": {"n": 1}},
            "new": True,
        },
        {
            "findAndModify": "counters",
            "query": {"_id": 1},
            "update": [{"$set": {"n": {"$add": ["$n", 1]}}}],
            "new": True,
        },
        {"delete": "logs", "deletes": [{"q": {"_id": 1}, "limit": 1}]},
    ]
    async with client.start_session() as session:
        for i, command in enumerate(commands):
            command = {**command, "txnNumber": Int64(10_000 + i)}
            first = await db.command(command, session=session)
            again = await db.command(command, session=session)  # the reply was lost: resend
            for key in ("n", "nModified", "value", "lastErrorObject"):
                assert first.get(key) == again.get(key), (command, key)
            assert "retriedStmtIds" in again or again.get("retriedStmtId") == 0
    assert (await db.counters.find_one({"_id": 1}))["n"] == 4
    assert [d["_id"] async for d in db.logs.find()] == [2]


# ------------------------------------------------------------------ change log and invalidation


async def test_trimmed_change_log_loses_old_resume_points(
    client: AsyncMongoClient, db_name: str
) -> None:
    jobs = client[db_name].jobs
    start = (await client.admin.command("ping"))["operationTime"]
    async with await jobs.watch() as behind:
        async with await jobs.watch() as stream:
            await jobs.insert_many([{"i": i} for i in range(3)])
            events = await _collect(stream, 3)
        trimmed = await client.admin.command("gatequeueTrimChangeLog", 1, keep=0)
        assert trimmed["removed"] >= 3 and trimmed["kept"] == 0
        # A stream that had not read the trimmed events fails: its history is gone.
        with pytest.raises(OperationFailure) as lost:
            await behind.try_next()
    assert lost.value.code == 286
    assert lost.value.has_error_label("NonResumableChangeStreamError")

    for option in ({"resume_after": events[0]["_id"]}, {"start_at_operation_time": start}):
        with pytest.raises(OperationFailure) as old:
            async with await jobs.watch(**option) as stream:
                await stream.try_next()
        assert old.value.code == 286
        assert old.value.details["codeName"] == "ChangeStreamHistoryLost"
        assert old.value.has_error_label("NonResumableChangeStreamError")
    # The newest event is the trim point: resuming from it loses nothing.
    async with await jobs.watch(resume_after=events[-1]["_id"]) as resumed:
        await jobs.insert_one({"i": 3})
        (later,) = await _collect(resumed, 1)
    assert later["fullDocument"]["i"] == 3
    with pytest.raises(OperationFailure) as bad:
        await client.admin.command("gatequeueTrimChangeLog", 1, keep=-1)
    assert bad.value.code == 2


async def test_drop_invalidates_and_start_after_continues(
    client: AsyncMongoClient, db_name: str
) -> None:
    db = client[db_name]
    await db.jobs.insert_one({"i": 0})
    async with await db.jobs.watch() as stream:
        await db.jobs.drop()
        drop, invalidate = await _collect(stream, 2)
        assert stream.alive is False
    assert drop["operationType"] == "drop"
    assert invalidate["operationType"] == "invalidate"
    with pytest.raises(OperationFailure) as resume:
        async with await db.jobs.watch(resume_after=invalidate["_id"]) as stream:
            await stream.try_next()
    assert resume.value.code == 260
    async with await db.jobs.watch(start_after=invalidate["_id"]) as after:
        await db.jobs.insert_one({"i": 1})
        (inserted,) = await _collect(after, 1)
    assert inserted["operationType"] == "insert" and inserted["fullDocument"]["i"] == 1

    async with await db.watch() as db_stream:
        await client.drop_database(db_name)
        kinds = [e["operationType"] for e in await _collect(db_stream, 3)]
    assert kinds == ["drop", "dropDatabase", "invalidate"]


# ------------------------------------------------------------------ what test suites ask


async def test_server_information_commands(client: AsyncMongoClient) -> None:
    parameters = await client.admin.command("getParameter", "*")
    assert parameters["enableTestCommands"] is True
    assert parameters["featureCompatibilityVersion"] == {"version": "6.0"}
    one = await client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
    assert set(one) - {"ok", "operationTime", "$clusterTime"} == {"featureCompatibilityVersion"}
    with pytest.raises(OperationFailure) as unknown:
        await client.admin.command({"getParameter": 1, "noSuchParameter": 1})
    assert unknown.value.code == 72
    build = await client.admin.command("buildInfo")
    assert build["versionArray"][:2] == [6, 0] and build["version"] == "6.0.0"
    opts = await client.admin.command("getCmdLineOpts")
    assert opts["parsed"]["replication"]["replSetName"] == "rs0"
    status = await client.admin.command("serverStatus")
    assert status["ok"] == 1.0
    assert (await client.admin.command("killAllSessions", []))["ok"] == 1.0


async def test_trim_and_pre_images_survive_a_restart(tmp_path: Any, db_name: str) -> None:
    """With a data directory the trim point and changeStreamPreAndPostImages are kept."""
    data_dir = tmp_path / "mongo"
    first = EmbeddedMongo(data_dir=data_dir)
    client: AsyncMongoClient = AsyncMongoClient(await asyncio.to_thread(first.start))
    try:
        db = client[db_name]
        await db.create_collection("jobs", changeStreamPreAndPostImages={"enabled": True})
        async with await db.jobs.watch() as stream:
            await db.jobs.insert_many([{"_id": 1, "v": 0}, {"_id": 2, "v": 0}, {"_id": 3}])
            old, _, _ = await _collect(stream, 3)
        # Keeps the newest event: resuming after the second still works, after the first not.
        await client.admin.command("gatequeueTrimChangeLog", 1, keep=1)
    finally:
        await client.close()
        await asyncio.to_thread(first.stop)

    second = EmbeddedMongo(data_dir=data_dir)
    client = AsyncMongoClient(await asyncio.to_thread(second.start))
    try:
        jobs = client[db_name].jobs
        with pytest.raises(OperationFailure) as lost:
            async with await jobs.watch(resume_after=old["_id"]) as stream:
                await stream.try_next()
        assert lost.value.code == 286
        async with await jobs.watch(
            full_document="required", full_document_before_change="required"
        ) as stream:
            await jobs.update_one({"_id": 1}, {"$set": {"v": 1}})
            (event,) = await _collect(stream, 1)
        assert event["fullDocumentBeforeChange"] == {"_id": 1, "v": 0}
        assert event["fullDocument"] == {"_id": 1, "v": 1}
        # Without pre-images (collMod off) a stream that requires them fails, as on mongod.
        await client[db_name].command(
            "collMod", "jobs", changeStreamPreAndPostImages={"enabled": False}
        )
        async with await jobs.watch(full_document_before_change="required") as stream:
            await jobs.update_one({"_id": 2}, {"$set": {"v": 1}})
            with pytest.raises(OperationFailure) as missing:
                await stream.try_next()
        assert missing.value.code == 47
        with pytest.raises(OperationFailure) as unsupported:
            await client[db_name].command("collMod", "jobs", validator={"v": {"$gte": 0}})
        assert unsupported.value.code == 72
    finally:
        await client.close()
        await asyncio.to_thread(second.stop)


async def test_collations_are_refused(client: AsyncMongoClient, db_name: str) -> None:
    """The library compares strings by code point only; a collation would be silently ignored."""
    coll = client[db_name].c
    await coll.insert_one({"name": "a"})
    with pytest.raises(OperationFailure) as refused:
        await coll.find_one({"name": "A"}, collation={"locale": "en", "strength": 2})
    assert refused.value.code == 2
    assert await coll.find_one({"name": "a"}, collation={"locale": "simple"}) is not None

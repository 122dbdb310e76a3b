"""The wire proxy's faults, against the session's MongoDB, each with what PyMongo does about it.

Every wait is on an event of the proxy or the driver, never a sleep; the only timing assertion is
a lower bound (a delayed reply takes at least the delay). Driver timeouts are short so that a
fault the driver cannot get past fails in about two seconds.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import bson
import pytest
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.errors import AutoReconnect
from wire_proxy import (
    CHECKSUM_PRESENT,
    HEADER,
    OP_COMPRESSED,
    OP_MSG,
    OP_QUERY,
    WireProxy,
    decode_message,
)

MakeClient = Callable[..., AsyncMongoClient[dict[str, Any]]]


@pytest.fixture
async def proxy(mongo_uri: str) -> AsyncIterator[WireProxy]:
    async with WireProxy.for_uri(mongo_uri) as p:
        yield p


@pytest.fixture
async def through(proxy: WireProxy) -> AsyncIterator[MakeClient]:
    """Clients that talk through the proxy, closed (after a heal) at the end of the test."""
    clients: list[AsyncMongoClient[dict[str, Any]]] = []

    def make(**options: Any) -> AsyncMongoClient[dict[str, Any]]:
        options.setdefault("serverSelectionTimeoutMS", 2000)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(proxy.uri(), **options)
        clients.append(client)
        return client

    yield make
    proxy.heal()
    for client in clients:
        await client.close()


async def _counter(direct: AsyncMongoClient[Any], db_name: str) -> None:
    await direct[db_name].counters.insert_one({"_id": "c", "n": 0})


async def _n(direct: AsyncMongoClient[Any], db_name: str) -> int:
    doc = await direct[db_name].counters.find_one({"_id": "c"})
    assert doc is not None
    return int(doc["n"])


# ------------------------------------------------------------------ decoding (no server)


def _frame(op_code: int, payload: bytes, request_id: int = 7) -> tuple[bytes, bytes]:
    return HEADER.pack(HEADER.size + len(payload), request_id, 0, op_code), payload


def test_decode_op_msg_folds_sequences_and_skips_the_checksum() -> None:
    body = bson.encode({"insert": "jobs", "$db": "gq", "lsid": {"id": 1}, "txnNumber": 3})
    docs = bson.encode({"_id": 1}) + bson.encode({"_id": 2})
    ident = b"documents\0"
    seq = struct.pack("<i", 4 + len(ident) + len(docs)) + ident + docs
    payload = struct.pack("<I", CHECKSUM_PRESENT) + b"\0" + body + b"\1" + seq + b"CRC!"
    msg = decode_message(*_frame(OP_MSG, payload))
    assert msg.command == "insert"
    assert msg.body is not None and msg.body["documents"] == [{"_id": 1}, {"_id": 2}]
    assert not msg.more_to_come


def test_decode_legacy_query_and_leave_compressed_alone() -> None:
    query = bson.encode({"isMaster": 1, "helloOk": True})
    payload = struct.pack("<i", 0) + b"admin.$cmd\0" + struct.pack("<ii", 0, -1) + query
    msg = decode_message(*_frame(OP_QUERY, payload))
    assert msg.command == "isMaster" and msg.body is not None and msg.body["$db"] == "admin"
    compressed = decode_message(*_frame(OP_COMPRESSED, struct.pack("<iib", OP_MSG, 10, 1)))
    assert compressed.body is None and compressed.original_op_code == OP_MSG


# ------------------------------------------------------------------ apply, then lose the reply


@pytest.mark.parametrize("command", ["update", "findAndModify"])
async def test_lost_reply_is_retried_and_answered_from_the_session(
    proxy: WireProxy,
    through: MakeClient,
    mongo_client: AsyncMongoClient[Any],
    db_name: str,
    command: str,
) -> None:
    """The write is applied, its answer lost; the driver's one retry resends the same lsid and
    txnNumber and gets the first answer back instead of a second increment."""
    await _counter(mongo_client, db_name)
    coll = through()[db_name].counters
    fault = proxy.lose_reply(command, where=lambda body: body.get(command) == "counters")

    if command == "update":
        result = await coll.update_one({"_id": "c"}, {"$inc": {"n": 1}})
        assert (result.matched_count, result.modified_count) == (1, 1)
    else:
        doc = await coll.find_one_and_update(
            {"_id": "c"}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER
        )
        assert doc == {"_id": "c", "n": 1}

    assert proxy.reply_dropped.is_set() and fault.hits == 1
    assert await _n(mongo_client, db_name) == 1  # changed exactly once
    first, retry = proxy.exchanges(command=command)
    assert (first.fate, retry.fate) == ("dropped", "delivered")
    assert first.conn != retry.conn  # the retry went on a new connection
    assert first.lsid is not None and first.txn_number is not None
    assert (retry.lsid, retry.txn_number) == (first.lsid, first.txn_number)
    lost, answered = first.reply_body, retry.reply_body
    assert lost is not None and answered is not None
    for key in ("n", "nModified", "value", "lastErrorObject"):
        assert answered.get(key) == lost.get(key), key


async def test_lost_reply_then_refusal_fails_although_the_write_was_applied(
    proxy: WireProxy, through: MakeClient, mongo_client: AsyncMongoClient[Any], db_name: str
) -> None:
    """An election: the answer is lost and the server is unreachable for longer than the retry
    waits. The caller sees an error; the write happened anyway (so callers must re-read)."""
    await _counter(mongo_client, db_name)
    coll = through()[db_name].counters
    await coll.find_one({"_id": "c"})  # connected before the fault
    proxy.lose_reply("update", then_refuse=True)  # refused until heal()

    with pytest.raises(AutoReconnect) as raised:  # ServerSelectionTimeoutError, NetworkTimeout
        await coll.update_one({"_id": "c"}, {"$inc": {"n": 1}})  # ... are AutoReconnects too

    assert proxy.refusing and proxy.stats["refused"] >= 1
    assert [e.fate for e in proxy.exchanges(command="update")] == ["dropped"]  # no retry landed
    assert await _n(mongo_client, db_name) == 1  # applied although it raised
    assert raised.value.has_error_label("RetryableWriteError")
    proxy.heal()
    await coll.update_one({"_id": "c"}, {"$inc": {"n": 1}})
    assert await _n(mongo_client, db_name) == 2


async def test_lost_reply_then_short_refusal_the_retry_lands(
    proxy: WireProxy, through: MakeClient, mongo_client: AsyncMongoClient[Any], db_name: str
) -> None:
    """An election shorter than serverSelectionTimeoutMS: the retry waits for a server, and
    once the refusal ends it lands and is answered from the session, not applied again."""
    await _counter(mongo_client, db_name)
    coll = through()[db_name].counters
    await coll.find_one({"_id": "c"})
    proxy.lose_reply("update", then_refuse=0.3)

    result = await coll.update_one({"_id": "c"}, {"$inc": {"n": 1}})
    assert result.modified_count == 1
    assert proxy.stats["refusal_ended"] == 1
    assert await _n(mongo_client, db_name) == 1
    first, retry = proxy.exchanges(command="update")
    assert (first.fate, retry.fate) == ("dropped", "delivered")
    assert retry.txn_number == first.txn_number


async def test_both_replies_lost_raises_but_the_write_is_applied_once(
    proxy: WireProxy, through: MakeClient, mongo_client: AsyncMongoClient[Any], db_name: str
) -> None:
    """A retryable write is retried once after a network error, not more: with both answers
    lost the caller gets the error, and the server applied the write once."""
    await _counter(mongo_client, db_name)
    coll = through()[db_name].counters
    proxy.lose_reply("update", times=2)

    with pytest.raises(AutoReconnect):
        await coll.update_one({"_id": "c"}, {"$inc": {"n": 1}})
    assert [e.fate for e in proxy.exchanges(command="update")] == ["dropped", "dropped"]
    assert await _n(mongo_client, db_name) == 1


# ------------------------------------------------------------------ refuse, reset


async def test_refused_then_healed(proxy: WireProxy, through: MakeClient, db_name: str) -> None:
    coll = through()[db_name].things
    await coll.insert_one({"_id": 1})
    proxy.refuse(60)  # resets what is open too; heal() ends it long before

    with pytest.raises(AutoReconnect):
        await coll.find_one({"_id": 1})
    assert proxy.stats["refused"] >= 1 and proxy.stats["reset"] >= 1

    proxy.heal()
    assert await coll.find_one({"_id": 1}) == {"_id": 1}


async def test_refusal_for_seconds_ends_by_itself(
    proxy: WireProxy, through: MakeClient, db_name: str
) -> None:
    coll = through()[db_name].things
    await coll.insert_one({"_id": 1})
    proxy.refuse(0.2)
    await proxy.wait_for("refusal_ended")
    assert not proxy.refusing
    assert await coll.find_one({"_id": 1}) == {"_id": 1}


@pytest.mark.parametrize("retry_reads", [False, True])
async def test_reset_fails_the_request_in_flight(
    proxy: WireProxy, through: MakeClient, db_name: str, retry_reads: bool
) -> None:
    """A reset while a find waits for its answer: without retryable reads the caller gets the
    network error; with them (the default) the driver's retry hides it. Either way the next
    operation works."""
    coll = through(retryReads=retry_reads)[db_name].things
    await coll.insert_one({"_id": 1})
    hold = proxy.delay(60, command="find", times=1)  # keeps the find in flight
    pending = asyncio.create_task(coll.find_one({"_id": 1}))
    await proxy.wait_for("delayed")  # MongoDB answered; the proxy holds it

    assert proxy.reset_all() >= 1
    if retry_reads:
        assert await pending == {"_id": 1}
        first, retry = proxy.exchanges(command="find")
        assert (first.fate, retry.fate) == ("unanswered", "delivered")
    else:
        with pytest.raises(AutoReconnect):
            await pending
    assert hold.hits == 1
    assert await coll.find_one({"_id": 1}) == {"_id": 1}


# ------------------------------------------------------------------ delay, black hole


async def test_delayed_reply_takes_at_least_the_delay(
    proxy: WireProxy, through: MakeClient, db_name: str
) -> None:
    coll = through()[db_name].things
    await coll.insert_one({"_id": 1})
    proxy.delay(0.3, command="find")
    started = time.monotonic()
    assert await coll.find_one({"_id": 1}) == {"_id": 1}
    assert time.monotonic() - started >= 0.3
    (find,) = proxy.exchanges(command="find")
    assert find.held_for >= 0.3 and find.fate == "delivered"


async def test_matching_delay_leaves_other_commands_alone(
    proxy: WireProxy, through: MakeClient, db_name: str
) -> None:
    """A reply held for the `slow` collection does not hold up anything else: the other
    operations finish while it is still held (an order, not a time)."""
    db = through()[db_name]
    await db.slow.insert_one({"_id": "s"})
    hold = proxy.delay(60, command="find", where=lambda body: body["find"] == "slow")
    slow = asyncio.create_task(db.slow.find_one({"_id": "s"}))
    await proxy.wait_for("delayed")

    await db.fast.insert_one({"_id": "f"})
    assert await db.fast.find_one({"_id": "f"}) == {"_id": "f"}
    assert not slow.done()
    hold.release()
    assert await slow == {"_id": "s"}

    finds = proxy.exchanges(command="find")
    assert [e.collection for e in finds] == ["slow", "fast"]
    slow_find, fast_find = finds
    assert fast_find.delivered_at is not None and slow_find.delivered_at is not None
    assert fast_find.delivered_at < slow_find.delivered_at
    assert proxy.stats["delayed"] == 1


async def test_black_hole_times_out_then_heals(
    proxy: WireProxy, through: MakeClient, db_name: str
) -> None:
    """A partition: the find times out after socketTimeoutMS; the driver's retries open new
    connections whose handshakes time out too (PyMongo labels those SystemOverloadedError and
    retries them with backoff), and the caller gets a NetworkTimeout. After heal it works."""
    coll = through(socketTimeoutMS=300, connectTimeoutMS=500)[db_name].things
    await coll.insert_one({"_id": 1})
    proxy.black_hole()

    with pytest.raises(AutoReconnect):  # NetworkTimeout is one
        await coll.find_one({"_id": 1})
    assert proxy.stats["black_holed"] >= 1
    assert proxy.exchanges(command="find", fate="black_holed")

    proxy.heal()
    assert await coll.find_one({"_id": 1}) == {"_id": 1}


# ------------------------------------------------------------------ monitoring


async def test_command_faults_leave_monitoring_alone(
    proxy: WireProxy, through: MakeClient, db_name: str
) -> None:
    """Faults armed for every application command, and for hello by name, leave the driver's
    heartbeats (and connection handshakes) untouched; the first application command is hit."""
    lose = proxy.lose_reply(None)  # any application command, once
    hello_delay = proxy.delay(60, command=("hello", "isMaster"))
    client = through(heartbeatFrequencyMS=500)
    await client.aconnect()  # an async client starts its monitor at first use, or here

    def heartbeats() -> int:
        return len(proxy.exchanges(role="monitoring", fate="delivered"))

    await proxy.wait_until(lambda: heartbeats() >= 3, "three delivered heartbeats")
    assert proxy.stats["reply_dropped"] == proxy.stats["delayed"] == 0
    assert (lose.hits, hello_delay.hits) == (0, 0)
    assert not any(e.faults for e in proxy.exchanges(role="monitoring"))
    monitors = [c for c in proxy.connections if c.role == "monitoring" and len(c.commands) > 1]
    assert monitors  # the monitor's connection: it only ever said hello

    await client[db_name].things.insert_one({"_id": 1})  # lost once, retried
    assert lose.hits == 1 and hello_delay.hits == 0
    (dropped,) = proxy.exchanges(fate="dropped")
    assert (dropped.command, dropped.role) == ("insert", "application")

    open_monitors = [c for c in proxy.connections if c.open and c.role == "monitoring"]
    assert open_monitors  # the driver closed the old one at the network error and redialled
    assert proxy.reset_all(on="application") >= 1  # the connection the retry used
    assert all(c.open for c in open_monitors)

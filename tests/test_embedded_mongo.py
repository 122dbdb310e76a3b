"""The embedded MongoDB-compatible server, driven through PyMongo's asyncio API.

These tests pin down each gap of a bare mongo-java-server that the launcher closes (wire
version, hello, cluster time, oplog, awaiting getMore, change events of findAndModify, ...),
so a change of the launcher or of the library version that reopens one fails here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from bson import Int64
from pymongo import AsyncMongoClient, ReturnDocument, monitoring
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from service.mongo import embedded as embedded_mongo
from service.mongo.embedded import EmbeddedMongo, EmbeddedMongoUnavailable

REPO = Path(__file__).resolve().parent.parent

needs_java = pytest.mark.skipif(
    shutil.which("java") is None
    or (shutil.which("mvn") is None and embedded_mongo.cached_jar() is None),
    reason="the embedded MongoDB server needs java (and mvn for its first build)",
)


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedMongo]:
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH")
    mongo = EmbeddedMongo()
    mongo.start()
    yield mongo
    mongo.stop()


@pytest.fixture
async def client(server: EmbeddedMongo) -> AsyncIterator[AsyncMongoClient]:
    client: AsyncMongoClient = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    yield client
    await client.close()


@pytest.fixture
def db_name() -> str:
    return f"embedded_{uuid.uuid4().hex[:10]}"


async def _collect(stream, n: int) -> list[dict]:  # type: ignore[no-untyped-def]
    events: list[dict] = []
    async with asyncio.timeout(30):
        async for event in stream:
            events.append(event)
            if len(events) == n:
                break
    return events


@needs_java
async def test_change_stream_delivers_inserts_in_order_and_resumes(
    client: AsyncMongoClient, db_name: str
) -> None:
    jobs = client[db_name].jobs
    async with await jobs.watch() as stream:
        for i in range(50):
            await jobs.insert_one({"i": i})
        events = await _collect(stream, 50)
    assert [e["operationType"] for e in events] == ["insert"] * 50
    assert [e["fullDocument"]["i"] for e in events] == list(range(50))
    assert all(e["ns"] == {"db": db_name, "coll": "jobs"} for e in events)

    token = events[24]["_id"]
    async with await jobs.watch(resume_after=token) as resumed:
        rest = await _collect(resumed, 25)
    assert [e["fullDocument"]["i"] for e in rest] == list(range(25, 50))
    async with await jobs.watch(start_after=token) as started:
        first = await _collect(started, 1)
    assert first[0]["fullDocument"]["i"] == 25


@needs_java
async def test_idle_change_stream_costs_no_cpu(
    client: AsyncMongoClient,
    server: EmbeddedMongo,
    db_name: str,
    record_property: pytest.RecordProperty,
) -> None:
    java = psutil.Process(server.pid)
    async with await client[db_name].jobs.watch() as stream:
        assert await stream.try_next() is None  # connections set up before measuring
        java_before = sum(java.cpu_times()[:2])
        cpu_before = time.process_time()
        started = time.monotonic()
        getmores = 0
        while time.monotonic() - started < 2.0:
            assert await stream.try_next() is None
            getmores += 1
        test_cpu = time.process_time() - cpu_before
        java_cpu = sum(java.cpu_times()[:2]) - java_before
    record_property("idle_2s_test_process_cpu_s", round(test_cpu, 3))
    record_property("idle_2s_java_cpu_s", round(java_cpu, 3))
    record_property("idle_2s_getmores", getmores)
    print(f"idle 2 s: test {test_cpu:.3f} s CPU, java {java_cpu:.3f} s CPU, {getmores} getMores")
    assert test_cpu < 0.2
    # Each getMore waits for its maxTimeMS (1 s by default) instead of answering at once.
    assert getmores <= 4
    assert java_cpu < 1.0, "the server spins while a change stream is idle"


class _GetMoreStarted(monitoring.CommandListener):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "getMore":
            self.loop.call_soon_threadsafe(self.event.set)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@needs_java
async def test_waiting_getmore_returns_when_an_insert_arrives(
    server: EmbeddedMongo, db_name: str
) -> None:
    listener = _GetMoreStarted(asyncio.get_running_loop())
    watcher: AsyncMongoClient = AsyncMongoClient(server.uri, event_listeners=[listener])
    writer: AsyncMongoClient = AsyncMongoClient(server.uri)
    try:
        # A getMore that is allowed to wait 60 s: if the server did not wake it on the insert,
        # try_next would return None (old behaviour: at once; no wake-up: after 60 s).
        async with await watcher[db_name].jobs.watch(max_await_time_ms=60_000) as stream:
            pending = asyncio.create_task(stream.try_next())
            async with asyncio.timeout(30):
                await listener.event.wait()
                await writer.admin.command("ping")  # the getMore is at the server by now
                await writer[db_name].jobs.insert_one({"claimed": False})
                change = await pending
        assert change is not None
        assert change["operationType"] == "insert"
        assert change["fullDocument"]["claimed"] is False
    finally:
        await watcher.close()
        await writer.close()


@needs_java
async def test_handshake_wire_version_and_cluster_time(
    client: AsyncMongoClient, server: EmbeddedMongo
) -> None:
    hello = await client.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert hello["maxWireVersion"] >= 9
    assert hello["setName"] == "rs0"
    port = server.uri.split(":")[2].split("/")[0]
    assert hello["hosts"] == [f"127.0.0.1:{port}"] == [hello["primary"]]
    assert hello["logicalSessionTimeoutMinutes"] > 0
    assert "operationTime" in hello and "$clusterTime" in hello
    legacy = await client.admin.command("isMaster")
    assert legacy["ismaster"] is True
    assert legacy["maxWireVersion"] == hello["maxWireVersion"]
    before = (await client.admin.command("ping"))["operationTime"]
    await client.embedded_time.c.insert_one({})
    after = (await client.admin.command("ping"))["operationTime"]
    assert after > before
    # The printed URI is a one-node replica set, and a direct connection works as well.
    direct: AsyncMongoClient = AsyncMongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true"
    )
    try:
        assert (await direct.admin.command("ping"))["ok"] == 1.0
    finally:
        await direct.close()


@needs_java
async def test_claims_logs_and_their_change_events(client: AsyncMongoClient, db_name: str) -> None:
    db = client[db_name]
    await db.job_logs.create_index([("jobId", 1), ("seq", 1)], unique=True)
    await db.jobs.insert_many([{"n": n, "status": "Pending", "version": 0} for n in range(3)])
    async with (
        await db.jobs.watch(full_document="updateLookup") as jobs_stream,
        await db.job_logs.watch() as logs_stream,
    ):
        claimed = await db.jobs.find_one_and_update(
            {"n": 1, "status": "Pending", "version": 0},
            {"$set": {"status": "Running"}, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER,
        )
        assert claimed is not None and claimed["version"] == 1
        lost = await db.jobs.find_one_and_update(
            {"n": 1, "status": "Pending", "version": 0},
            {"$set": {"status": "Running"}, "$inc": {"version": 1}},
        )
        assert lost is None
        (update,) = await _collect(jobs_stream, 1)
        assert update["operationType"] == "update"
        assert update["documentKey"] == {"_id": claimed["_id"]}
        assert update["updateDescription"]["updatedFields"] == {"status": "Running", "version": 1}
        assert update["fullDocument"]["status"] == "Running"

        await db.job_logs.insert_one({"jobId": 1, "seq": 0, "lines": ["a"]})
        with pytest.raises(DuplicateKeyError) as duplicate:
            await db.job_logs.insert_one({"jobId": 1, "seq": 0, "lines": ["again"]})
        assert duplicate.value.code == 11000
        with pytest.raises(BulkWriteError) as bulk:
            await db.job_logs.insert_many(
                [{"jobId": 1, "seq": 1}, {"jobId": 1, "seq": 0}, {"jobId": 1, "seq": 2}]
            )
        assert bulk.value.details["nInserted"] == 1
        assert [e["code"] for e in bulk.value.details["writeErrors"]] == [11000]
        await db.job_logs.insert_one({"jobId": 1, "seq": 3})
        # Rejected documents make no change events: seq 0, 1, 3 and nothing else.
        inserted = await _collect(logs_stream, 3)
        assert [e["fullDocument"]["seq"] for e in inserted] == [0, 1, 3]

    assert await db.job_logs.count_documents({"jobId": 1}) == 3
    newest = [d["seq"] async for d in db.job_logs.find({"jobId": 1}).sort("seq", -1).limit(2)]
    assert newest == [3, 1]


@needs_java
async def test_retried_write_is_applied_once(client: AsyncMongoClient, db_name: str) -> None:
    db = client[db_name]
    await db.counters.insert_one({"_id": 1, "n": 0})
    command = {
        "update": "counters",
        "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}],
        "txnNumber": Int64(1_000),  # above any number the pooled session used before
    }
    async with client.start_session() as session:
        first = await db.command(command, session=session)
        again = await db.command(command, session=session)  # resent after a network error
        assert first["nModified"] == again["nModified"] == 1
        assert (await db.counters.find_one({"_id": 1}))["n"] == 1
        command["txnNumber"] = Int64(1_001)
        await db.command(command, session=session)
        assert (await db.counters.find_one({"_id": 1}))["n"] == 2


@needs_java
async def test_transactions_are_refused(client: AsyncMongoClient, db_name: str) -> None:
    async with client.start_session() as session:
        await session.start_transaction()
        with pytest.raises(OperationFailure, match="transactions are not supported"):
            await client[db_name].jobs.insert_one({}, session=session)


@needs_java
async def test_partial_unique_index_is_refused(client: AsyncMongoClient, db_name: str) -> None:
    # The library would ignore the filter and reject documents mongod accepts.
    with pytest.raises(OperationFailure, match="sparse unique index"):
        await client[db_name].jobs.create_index(
            "key", unique=True, partialFilterExpression={"key": {"$type": "string"}}
        )
    await client[db_name].jobs.create_index("key", unique=True, sparse=True)
    await client[db_name].jobs.insert_many([{}, {}, {"key": "a"}])
    with pytest.raises(DuplicateKeyError):
        await client[db_name].jobs.insert_one({"key": "a"})


@needs_java
async def test_data_and_resume_tokens_survive_a_restart(tmp_path: Path, db_name: str) -> None:
    data_dir = tmp_path / "mongo"
    first = EmbeddedMongo(data_dir=data_dir)
    uri = await asyncio.to_thread(first.start)
    client: AsyncMongoClient = AsyncMongoClient(uri)
    try:
        async with await client[db_name].jobs.watch() as stream:
            await client[db_name].jobs.insert_one({"_id": "before", "status": "Pending"})
            (event,) = await _collect(stream, 1)
    finally:
        await client.close()
        await asyncio.to_thread(first.stop)

    second = EmbeddedMongo(data_dir=data_dir)
    uri = await asyncio.to_thread(second.start)
    client = AsyncMongoClient(uri)
    try:
        assert await client[db_name].jobs.find_one({"_id": "before"}) == {
            "_id": "before",
            "status": "Pending",
        }
        await client[db_name].jobs.insert_one({"_id": "after"})
        async with await client[db_name].jobs.watch(resume_after=event["_id"]) as stream:
            (resumed,) = await _collect(stream, 1)
        assert resumed["documentKey"] == {"_id": "after"}
    finally:
        await client.close()
        await asyncio.to_thread(second.stop)


_CHILD = """
import sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from service.mongo.embedded import EmbeddedMongo
mongo = EmbeddedMongo()
mongo.start()
print(mongo.pid, flush=True)
sys.stdin.read()
"""


@needs_java
def test_server_exits_when_its_parent_dies() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        java_pid = int(child.stdout.readline())
        java = psutil.Process(java_pid)
        assert java.is_running()
    finally:
        child.kill()
        child.wait()
    java.wait(timeout=20)  # psutil.TimeoutExpired here means the server outlived its parent
    assert not java.is_running()


def test_missing_java_and_maven_name_the_alternatives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(EmbeddedMongoUnavailable) as missing:
        embedded_mongo.launcher_jar()
    message = str(missing.value)
    for needle in ("java", "mvn", "MONGODB_URI", "Docker", "mongod"):
        assert needle in message
    with pytest.raises(EmbeddedMongoUnavailable, match="MONGODB_URI"):
        EmbeddedMongo().start()


def test_the_build_is_keyed_by_every_main_source_and_no_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit anywhere under src/main (or pom.xml) rebuilds the jar; an edit of a JUnit test
    does not, and the build copy leaves the tests out (CI runs them, first use skips them)."""
    copy = tmp_path / "mongo-server"
    shutil.copytree(embedded_mongo.SOURCE_DIR, copy, ignore=shutil.ignore_patterns("target"))
    monkeypatch.setattr(embedded_mongo, "SOURCE_DIR", copy)
    monkeypatch.setattr(embedded_mongo, "_POM", copy / "pom.xml")
    monkeypatch.setattr(embedded_mongo, "_MAIN_SOURCES", copy / "src" / "main")
    package = copy / "src" / "main" / "java" / "dev" / "gatequeue" / "mongo"
    digests = [embedded_mongo._source_digest()]

    test_file = next((copy / "src" / "test").rglob("*.java"))
    test_file.write_text(test_file.read_text() + "// edited\n")
    assert embedded_mongo._source_digest() == digests[-1]

    for edit in (package / "changes" / "Tokens.java", package / "wire" / "Handler.java"):
        edit.write_text(edit.read_text() + "// edited\n")
        digests.append(embedded_mongo._source_digest())
    (package / "query" / "Extra.java").write_text("package dev.gatequeue.mongo.query;\n")
    digests.append(embedded_mongo._source_digest())
    assert len(set(digests)) == len(digests)

    built = tmp_path / "build"
    shutil.copytree(copy, built, ignore=embedded_mongo._copy_ignore)
    assert (built / "src" / "main").is_dir() and not (built / "src" / "test").exists()

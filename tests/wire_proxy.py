"""A MongoDB wire-protocol proxy that injects real network faults between a driver and a server.

Replica-set faults (an election, a partition, a primary that applied a write and died before
answering) reach a client as a handful of network events: connections reset, refused, answers
late or never. This proxy produces exactly those events on real sockets, at chosen commands,
so a test can prove what PyMongo and gatequeue do about them without mocking the driver.

It frames every message by the 16-byte header (messageLength, requestID, responseTo, opCode),
decodes OP_MSG bodies with `bson.decode` to learn each request's command, `$db`, collection,
`lsid` and `txnNumber`, and pairs replies to requests by `responseTo` (following exhaust
streams: a reply with moreToCome is answered on by the next). Legacy OP_QUERY/OP_REPLY are
decoded too; OP_COMPRESSED passes untouched and unread (clients in these tests don't compress,
so every command is visible). Bytes are forwarded as they came (checksums stay valid);
decoding is only for deciding and recording.

Usage::

    async with WireProxy.for_uri(mongo_uri) as proxy:
        client = AsyncMongoClient(proxy.uri(serverSelectionTimeoutMS=2000))
        proxy.lose_reply("findAndModify")          # applied upstream, answer never delivered
        await coll.find_one_and_update(...)        # the driver's retry gets the stored answer
        await proxy.wait_for("reply_dropped")
        assert [e.command for e in proxy.exchanges(command="findAndModify")] == [...]

Monitoring: PyMongo keeps a dedicated monitoring connection per server that only ever sends
`hello` (polled every heartbeatFrequencyMS, or awaited with `topologyVersion` where the server
streams it; the embedded server sends no `topologyVersion`, so it is polled). A connection is
"monitoring" while every command it carried was hello/isMaster and "application" from its
first other command; a hello on a monitoring connection, or a connection's handshake, is a
"monitoring" request. Command-matching faults hit application requests only unless asked
(`on="any"`), so a test's fault never blinds the driver's server monitor by accident. (By that
rule a pool connection that has only done its handshake counts as monitoring until it is used:
the wire cannot tell it from a monitor, whose handshake looks the same.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlencode

import bson
from pymongo.uri_parser import parse_uri

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013
OP_NAMES = {
    OP_REPLY: "OP_REPLY",
    OP_QUERY: "OP_QUERY",
    OP_COMPRESSED: "OP_COMPRESSED",
    OP_MSG: "OP_MSG",
}

# OP_MSG flagBits.
CHECKSUM_PRESENT = 1 << 0
MORE_TO_COME = 1 << 1
EXHAUST_ALLOWED = 1 << 16

HELLO_COMMANDS = frozenset({"hello", "ismaster"})
HEADER = struct.Struct("<iiii")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # well over MongoDB's 48 MB maxMessageSizeBytes

Scope = Literal["application", "monitoring", "any"]
Role = Literal["monitoring", "application"]
Fate = Literal["pending", "delivered", "dropped", "black_holed", "unanswered", "no_reply"]


# ------------------------------------------------------------------ decoding


@dataclass
class Message:
    """One framed wire message, decoded as far as the proxy needs (`body` is None if it could
    not be, e.g. OP_COMPRESSED, which is forwarded untouched but never looked into)."""

    request_id: int
    response_to: int
    op_code: int
    flags: int = 0
    body: dict[str, Any] | None = None
    original_op_code: int | None = None  # inside OP_COMPRESSED

    @property
    def op_name(self) -> str:
        return OP_NAMES.get(self.op_code, f"op{self.op_code}")

    @property
    def more_to_come(self) -> bool:
        return self.op_code == OP_MSG and bool(self.flags & MORE_TO_COME)

    @property
    def command(self) -> str | None:
        """The command's name: the body's first key (its spelling as sent: `findAndModify`)."""
        return next(iter(self.body), None) if self.body else None


def decode_message(header: bytes, payload: bytes) -> Message:
    """Frame-level decode; never raises for a well-framed message (a body it cannot read is
    simply None, so odd traffic still passes)."""
    _, request_id, response_to, op_code = HEADER.unpack(header)
    msg = Message(request_id, response_to, op_code)
    try:
        if op_code == OP_MSG:
            msg.flags, msg.body = _decode_op_msg(payload)
        elif op_code == OP_QUERY:
            msg.flags, msg.body = _decode_op_query(payload)
        elif op_code == OP_REPLY:
            msg.flags = struct.unpack_from("<i", payload, 0)[0]
            docs = bson.decode_all(payload[20:])
            msg.body = docs[0] if docs else None
        elif op_code == OP_COMPRESSED:
            msg.original_op_code = struct.unpack_from("<i", payload, 0)[0]
    except Exception:  # a body we cannot parse is forwarded all the same
        msg.body = None
    return msg


def _decode_op_msg(payload: bytes) -> tuple[int, dict[str, Any] | None]:
    """flagBits, then sections: kind 0 is the body, kind 1 a document sequence (`documents` of
    an insert, `updates`, `deletes`), which we fold into the body under its identifier, as the
    server does. A trailing CRC-32C is present when flagBits has checksumPresent."""
    (flags,) = struct.unpack_from("<I", payload, 0)
    end = len(payload) - (4 if flags & CHECKSUM_PRESENT else 0)
    pos = 4
    body: dict[str, Any] | None = None
    sequences: dict[str, list[Any]] = {}
    while pos < end:
        kind = payload[pos]
        pos += 1
        if kind == 0:
            (size,) = struct.unpack_from("<i", payload, pos)
            body = bson.decode(payload[pos : pos + size])
            pos += size
        elif kind == 1:
            (size,) = struct.unpack_from("<i", payload, pos)
            nul = payload.index(b"\0", pos + 4)
            identifier = payload[pos + 4 : nul].decode()
            sequences[identifier] = bson.decode_all(payload[nul + 1 : pos + size])
            pos += size
        else:
            raise ValueError(f"unknown OP_MSG section kind {kind}")
    if body is not None:
        body.update(sequences)
    return flags, body


def _decode_op_query(payload: bytes) -> tuple[int, dict[str, Any] | None]:
    """Legacy OP_QUERY (a command is a query on `db.$cmd`), as older drivers send their first
    `isMaster`. PyMongo 4.20 no longer does (PYTHON-5713): its handshake is an OP_MSG `ismaster`
    with `helloOk`, and `hello` after the server said helloOk. Non-command queries have no
    command name for us; their body is None."""
    (flags,) = struct.unpack_from("<i", payload, 0)
    nul = payload.index(b"\0", 4)
    namespace = payload[4:nul].decode()
    pos = nul + 1 + 8  # numberToSkip, numberToReturn
    (size,) = struct.unpack_from("<i", payload, pos)
    query = bson.decode(payload[pos : pos + size])
    if "$query" in query:
        query = query["$query"]
    db, _, coll = namespace.partition(".")
    if coll != "$cmd":
        return flags, None
    query = dict(query)
    query.setdefault("$db", db)
    return flags, query


# ------------------------------------------------------------------ records


@dataclass
class Connection:
    """One client connection through the proxy and what it carried."""

    id: int
    opened_at: float
    role: Role = "monitoring"  # until its first non-hello command
    awaits_hello: bool = False  # sent a hello with topologyVersion (a streaming monitor)
    commands: list[str | None] = field(default_factory=list)
    closed_at: float | None = None
    reset_by_proxy: bool = False

    # Set while open; not part of the record's meaning.
    client: asyncio.StreamWriter | None = field(default=None, repr=False)
    upstream: asyncio.StreamWriter | None = field(default=None, repr=False)
    tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass
class Exchange:
    """A request and what became of its reply: the log a test asserts on.

    Timestamps are `time.monotonic()`. `fate`: pending (no reply yet), delivered, dropped (the
    reply came and the proxy reset the connection instead), black_holed (request swallowed),
    unanswered (the connection closed first), no_reply (moreToCome: the client expects none).
    """

    conn: int
    role: Role  # of this request: "monitoring" for hellos on monitoring connections
    request: Message
    sent_at: float
    db: str | None = None
    collection: str | None = None
    lsid: Any = None
    txn_number: int | None = None
    fate: Fate = "pending"
    reply: Message | None = None
    replied_at: float | None = None  # when the reply reached the proxy
    delivered_at: float | None = None
    held_for: float = 0.0  # time a delay fault held the reply
    faults: list[Fault] = field(default_factory=list)  # the faults that matched it

    @property
    def command(self) -> str | None:
        return self.request.command

    @property
    def body(self) -> dict[str, Any] | None:
        return self.request.body

    @property
    def reply_body(self) -> dict[str, Any] | None:
        return self.reply.body if self.reply is not None else None


def _describe(conn: Connection, msg: Message, now: float) -> Exchange:
    body = msg.body or {}
    name = msg.command
    is_hello = name is not None and name.lower() in HELLO_COMMANDS
    if name is not None and not is_hello:
        conn.role = "application"
    elif msg.body is None and msg.op_code != OP_MSG:
        # OP_COMPRESSED hides its command; drivers never compress hello/handshake/auth (the
        # compression spec forbids it), so it is an application command.
        conn.role = "application"
    if is_hello and "topologyVersion" in body:
        conn.awaits_hello = True
    conn.commands.append(name)
    role: Role = "monitoring" if is_hello and conn.role == "monitoring" else "application"
    target = body.get(name) if name else None
    collection = target if isinstance(target, str) else body.get("collection")
    lsid = body.get("lsid")
    txn = body.get("txnNumber")
    return Exchange(
        conn=conn.id,
        role=role,
        request=msg,
        sent_at=now,
        db=body.get("$db"),
        collection=collection if isinstance(collection, str) else None,
        lsid=lsid.get("id") if isinstance(lsid, Mapping) else None,
        txn_number=int(txn) if txn is not None else None,
    )


# ------------------------------------------------------------------ faults


@dataclass(eq=False)
class Fault:
    """A programmed command fault. `times` is how many requests it may still hit (None:
    unlimited); `hits` counts those it did; `fired` is set at the first. `cancel()` disarms it;
    for a delay, `release()` also lets replies it holds go at once."""

    kind: Literal["lose_reply", "delay"]
    commands: frozenset[str] | None  # lower-cased; None matches every command
    where: Callable[[dict[str, Any]], bool] | None
    on: Scope
    times: int | None
    seconds: float = 0.0  # delay
    then_refuse: float | bool = False  # lose_reply
    hits: int = 0
    armed: bool = True
    fired: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, exchange: Exchange) -> bool:
        if not self.armed or (self.times is not None and self.hits >= self.times):
            return False
        if self.on != "any" and exchange.role != self.on:
            return False
        name = exchange.command
        if self.commands is not None and (name is None or name.lower() not in self.commands):
            return False
        if self.where is not None:
            try:  # a predicate that raises (a key this command lacks) does not match
                return bool(self.where(exchange.body or {}))
            except Exception:
                return False
        return True

    def cancel(self) -> None:
        self.armed = False

    def release(self) -> None:
        self.armed = False
        self.released.set()


def _command_set(command: str | Iterable[str] | None) -> frozenset[str] | None:
    if command is None:
        return None
    names = [command] if isinstance(command, str) else list(command)
    return frozenset(n.lower() for n in names)


# ------------------------------------------------------------------ the proxy


class WireProxy:
    """An asyncio TCP proxy in front of one MongoDB server, listening on 127.0.0.1.

    Faults (each counted in `stats` under the name in brackets, and awaitable with `wait_for`):

    - `lose_reply(command, ...)`: forward the request, wait for MongoDB's reply (the write is
      applied), then reset the client connection instead of delivering it [reply_dropped];
      optionally then refuse connections like an election would.
    - `refuse(seconds)`: reset open connections and accept-then-reset new ones [refused];
      `heal()` ends it early.
    - `reset_all()`: reset every open connection now [reset].
    - `delay(seconds, command=...)`: hold replies [delayed: counted when a reply is held].
    - `black_hole()`: read everything, forward and answer nothing, until `heal()`
      [black_holed: requests swallowed].

    Other counters: accepted, requests, replies, upstream_failed. A reset is a real TCP RST
    (SO_LINGER 0), which the driver reads as "connection reset by peer", like a dead primary.

    The driver must not find its way around the proxy: MongoDB's `hello` advertises the
    server's own address in `hosts`/`me` (the embedded server calls itself the one member of
    replica set `rs0`). A client given the proxy's address without `directConnection=true`
    (with `replicaSet=rs0` or without) discovers the set, drops the seed that is not in `hosts`
    and talks to the server directly: only the seed's handshake would pass the proxy. `uri()`
    therefore says `directConnection=true`: the driver talks to the seed it was given and
    nothing else, while still seeing an RSPrimary, so sessions and retryable writes stay on.

    Only plain TCP: TLS or compressed traffic would pass but could not be inspected (clients in
    these tests don't compress: no `compressors` option, so every command is visible).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, userinfo: str = "") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.stats: Counter[str] = Counter()
        self.log: list[Exchange] = []
        self.connections: list[Connection] = []
        self.faults: list[Fault] = []
        self.events: dict[str, asyncio.Event] = {}
        self._userinfo = userinfo
        self._refusing = False
        self._refusal_token = 0
        self._black_hole = False
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._closing = False
        self.guard_s = 30.0  # longest wait_for/wait_until before it gives up
        self.started_at = time.monotonic()

    @classmethod
    def for_uri(cls, uri: str) -> WireProxy:
        """A proxy in front of the (first) host of `uri`, keeping its credentials for `uri()`."""
        parsed = parse_uri(uri)
        host, port = parsed["nodelist"][0]
        userinfo = ""
        if parsed.get("username"):
            userinfo = quote(parsed["username"], safe="")
            if parsed.get("password") is not None:
                userinfo += ":" + quote(parsed["password"], safe="")
            userinfo += "@"
        return cls(host, port, userinfo=userinfo)

    # -- lifecycle

    async def start(self) -> WireProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, reset what is open, wait for every connection handler to finish."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            if conn.open:
                self._close(conn, reset=True)
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        for _, future in self._waiters:
            if not future.done():
                future.cancel()

    async def __aenter__(self) -> WireProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def uri(self, **options: object) -> str:
        """A mongodb:// URI through the proxy, with `directConnection=true` (see the class
        docstring) and any further URI options (`True`/`False` written as true/false)."""
        query: dict[str, str] = {"directConnection": "true"}
        for key, value in options.items():
            query[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return f"mongodb://{self._userinfo}{self.host}:{self.port}/?{urlencode(query)}"

    # -- faults

    def lose_reply(
        self,
        command: str | Iterable[str] | None,
        *,
        where: Callable[[dict[str, Any]], bool] | None = None,
        times: int | None = 1,
        then_refuse: float | bool = False,
        on: Scope = "application",
    ) -> Fault:
        """Apply, then lose the answer: the matching request goes to MongoDB, the proxy waits
        for MongoDB's reply (so the write is applied), then resets the client's connection
        instead of delivering it. That is a primary dying between commit and answer.

        `then_refuse`: afterwards refuse connections (`refuse()`), for that many seconds, or
        until `heal()` if True: an election, long enough that the driver's single retry finds
        no server. `where` is a predicate on the decoded command (document sequences folded in).
        Requests sent with moreToCome expect no reply and are never matched.
        """
        fault = Fault(
            "lose_reply", _command_set(command), where, on, times, then_refuse=then_refuse
        )
        self.faults.append(fault)
        return fault

    def delay(
        self,
        seconds: float,
        *,
        command: str | Iterable[str] | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
        times: int | None = None,
        on: Scope = "application",
    ) -> Fault:
        """Hold replies to matching requests (every application request if `command` is None)
        for `seconds` after MongoDB answered, or until the fault's `release()`. `on="any"` also
        delays hellos, which makes the driver's monitor time out if the delay exceeds
        connectTimeoutMS."""
        fault = Fault("delay", _command_set(command), where, on, times, seconds=seconds)
        self.faults.append(fault)
        return fault

    def refuse(self, seconds: float | None = None, *, reset_open: bool = True) -> None:
        """Accept and reset at once every new connection, for `seconds` or until `heal()`.

        `reset_open` (the default) resets the open connections as well: an unreachable server
        also breaks the connections a client already has, and without it a pooled connection
        would carry on as if nothing happened."""
        self._refusing = True
        self._refusal_token += 1
        if reset_open:
            self.reset_all()
        if seconds is not None:
            token = self._refusal_token
            asyncio.get_running_loop().call_later(seconds, self._end_refusal, token)

    def black_hole(self) -> None:
        """A partition: connections stay up, new ones are accepted, everything sent is read and
        dropped and nothing comes back (replies in flight are dropped too), until `heal()`."""
        self._black_hole = True

    def heal(self) -> None:
        """The network is whole again: no refusal, no black hole, no armed faults (delays held
        now are released). Connections already reset stay reset; the driver reconnects."""
        self._refusing = False
        self._refusal_token += 1
        self._black_hole = False
        for fault in self.faults:
            fault.release()
        self._changed()

    def reset_all(self, *, on: Scope = "any") -> int:
        """Reset every open connection now (or only application/monitoring ones); returns how
        many. A request in flight on one of them fails in the driver with a network error."""
        count = 0
        for conn in self.connections:
            if conn.open and (on == "any" or conn.role == on):
                self._close(conn, reset=True)
                self._count("reset")
                count += 1
        return count

    # -- observing

    @property
    def reply_dropped(self) -> asyncio.Event:
        """Set when a reply has been lost on purpose (clear it to wait for the next)."""
        return self.event("reply_dropped")

    @property
    def refusing(self) -> bool:
        return self._refusing

    def event(self, kind: str) -> asyncio.Event:
        """An Event set each time `stats[kind]` goes up."""
        return self.events.setdefault(kind, asyncio.Event())

    async def wait_for(self, kind: str, count: int = 1) -> None:
        """Until `stats[kind] >= count` (counts are totals since the proxy started)."""
        await self.wait_until(lambda: self.stats[kind] >= count, f"stats[{kind!r}] >= {count}")

    async def wait_until(self, predicate: Callable[[], bool], what: str = "condition") -> None:
        """Until `predicate()` holds; it is re-checked whenever a counter or the log changes.

        `guard_s` bounds the wait against a hung test (it is no timing assertion): it raises
        TimeoutError naming `what` with the stats, so a failure says what did happen."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.guard_s):
                await future
        except TimeoutError:
            raise TimeoutError(
                f"proxy: no {what} after {self.guard_s} s; stats={dict(self.stats)}"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def exchanges(
        self,
        *,
        command: str | None = None,
        role: Role | None = None,
        fate: Fate | None = None,
    ) -> list[Exchange]:
        """The log, filtered (command compared case-insensitively)."""
        return [
            e
            for e in self.log
            if (command is None or (e.command or "").lower() == command.lower())
            and (role is None or e.role == role)
            and (fate is None or e.fate == fate)
        ]

    def commands(self, role: Role | None = "application") -> list[str | None]:
        """Command names in the order they passed (application ones by default)."""
        return [e.command for e in self.exchanges(role=role)]

    # -- internals

    def _count(self, kind: str) -> None:
        self.stats[kind] += 1
        self.event(kind).set()
        self._changed()

    def _changed(self) -> None:
        """Wake the waiters whose predicate now holds (one that raises gets the error, so a
        test's bad predicate fails the test, not the proxy's pumps)."""
        for predicate, future in list(self._waiters):
            if future.done():
                continue
            try:
                if predicate():
                    future.set_result(None)
            except Exception as exc:
                future.set_exception(exc)

    def _end_refusal(self, token: int) -> None:
        if token == self._refusal_token:
            self._refusing = False
            self._count("refusal_ended")

    @staticmethod
    def _rst(writer: asyncio.StreamWriter | None) -> None:
        """Abort with SO_LINGER 0: the peer sees a TCP RST, not an orderly close."""
        if writer is None:
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    def _close(self, conn: Connection, *, reset: bool) -> None:
        if not conn.open:
            return
        conn.closed_at = time.monotonic()
        conn.reset_by_proxy = reset
        if reset:
            self._rst(conn.client)
        elif conn.client is not None:
            conn.client.transport.abort()
        if conn.upstream is not None:
            conn.upstream.transport.abort()
        current = asyncio.current_task()
        for task in conn.tasks:
            if task is not current:
                task.cancel()
        for exchange in self.log:
            if exchange.conn == conn.id and exchange.fate == "pending":
                exchange.fate = "unanswered"
        self._changed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Closing the proxy cancels its handlers; asyncio's stream callback logs a
            # cancelled handler as an error, so end it as a normal return instead.
            pass
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing or self._closing:
            self._rst(writer)
            self._count("refused")
            return
        conn = Connection(len(self.connections) + 1, time.monotonic(), client=writer)
        self.connections.append(conn)
        self._count("accepted")
        try:
            up_reader, conn.upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._close(conn, reset=True)
            self._count("upstream_failed")
            return
        if not conn.open:  # reset while we were connecting upstream
            conn.upstream.transport.abort()
            return
        pending: dict[int, Exchange] = {}
        conn.tasks = [
            asyncio.create_task(self._requests(conn, reader, pending)),
            asyncio.create_task(self._replies(conn, up_reader, pending)),
        ]
        try:
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._close(conn, reset=False)
            await asyncio.gather(*conn.tasks, return_exceptions=True)

    @staticmethod
    async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        header = await reader.readexactly(HEADER.size)
        (length,) = struct.unpack_from("<i", header, 0)
        if not HEADER.size <= length <= MAX_MESSAGE_BYTES:
            raise ConnectionError(f"bad messageLength {length}")
        return header, await reader.readexactly(length - HEADER.size)

    async def _requests(
        self, conn: Connection, reader: asyncio.StreamReader, pending: dict[int, Exchange]
    ) -> None:
        """Client to server: record, match faults, forward (or swallow in a black hole)."""
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                header, payload = await self._read_message(reader)
                exchange = _describe(conn, decode_message(header, payload), time.monotonic())
                self.log.append(exchange)
                self._count("requests")
                if self._black_hole:
                    exchange.fate = "black_holed"
                    self._count("black_holed")
                    continue
                if exchange.request.more_to_come:
                    exchange.fate = "no_reply"
                else:
                    pending[exchange.request.request_id] = exchange
                    for fault in self.faults:
                        if fault.matches(exchange):
                            fault.hits += 1
                            fault.fired.set()
                            exchange.faults.append(fault)
                assert conn.upstream is not None
                conn.upstream.write(header + payload)
                await conn.upstream.drain()

    async def _replies(
        self, conn: Connection, reader: asyncio.StreamReader, pending: dict[int, Exchange]
    ) -> None:
        """Server to client: pair by responseTo, then deliver, hold, or lose."""
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                header, payload = await self._read_message(reader)
                reply = decode_message(header, payload)
                exchange = pending.pop(reply.response_to, None)
                self._count("replies")
                if self._black_hole:
                    if exchange is not None:
                        exchange.fate = "black_holed"
                    self._count("black_holed")
                    continue
                if exchange is None:  # unpaired (nothing we saw asked for it): pass it on
                    await self._deliver(conn, header + payload, None)
                    continue
                exchange.reply = reply
                exchange.replied_at = time.monotonic()
                if reply.more_to_come:
                    # Exhaust (a streamed hello or getMore): the next reply answers this one.
                    pending[reply.request_id] = exchange
                lose = [f for f in exchange.faults if f.kind == "lose_reply"]
                if lose:
                    exchange.fate = "dropped"
                    self._close(conn, reset=True)
                    self._count("reply_dropped")
                    if lose[0].then_refuse is not False:
                        refuse = lose[0].then_refuse
                        self.refuse(None if refuse is True else float(refuse))
                    return
                await self._hold(exchange)
                if not conn.open:
                    return
                if self._black_hole:  # partitioned while the reply was held
                    exchange.fate = "black_holed"
                    self._count("black_holed")
                    continue
                await self._deliver(conn, header + payload, exchange)

    async def _hold(self, exchange: Exchange) -> None:
        """Wait out the delay faults that matched the request (each until its time or its
        release)."""
        for fault in exchange.faults:
            if fault.kind != "delay" or fault.released.is_set():
                continue
            self._count("delayed")
            started = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(fault.seconds):
                    await fault.released.wait()
            exchange.held_for += time.monotonic() - started

    async def _deliver(self, conn: Connection, data: bytes, exchange: Exchange | None) -> None:
        assert conn.client is not None
        conn.client.write(data)
        await conn.client.drain()
        if exchange is not None:
            exchange.delivered_at = time.monotonic()
            if exchange.fate == "pending":
                exchange.fate = "delivered"
        self._changed()

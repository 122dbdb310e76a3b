"""Find a MongoDB to talk to, in the order of docs/design.md ("MongoDB").

1. a URI the caller passes (`MONGODB_URI`, read by service.config: any real deployment);
2. a testcontainers one-node replica set, where a Docker engine answers;
3. a `mongod` on PATH, started as a one-node replica set in a temp dir;
4. the embedded mongo-java-server launcher under `deploy/mongo-server/`.

Tests use `discover()`; `gatequeue up` goes straight from 1 to 4 unless asked otherwise,
because the embedded server is what keeps its data under `./.gatequeue/` with no set-up.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

KINDS = ("uri", "testcontainers", "mongod", "embedded")


@dataclass
class MongoHandle:
    """A running (or external) MongoDB and how to stop what we started."""

    uri: str
    kind: str
    description: str
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)

    def stop(self) -> None:
        self._stop()


def plan(uri: str | None = None) -> tuple[str, str]:
    """Which kind `discover(uri)` would use, without starting anything (pytest's header)."""
    if uri:
        return "uri", f"MONGODB_URI ({_redact(uri)})"
    if _docker_answers():
        return "testcontainers", "testcontainers mongo:7 one-node replica set"
    mongod = shutil.which("mongod")
    if mongod:
        return "mongod", f"mongod on PATH ({mongod}) as a one-node replica set"
    return "embedded", "embedded mongo-java-server (deploy/mongo-server)"


@contextlib.contextmanager
def discover(
    uri: str | None = None, *, kind: str | None = None, data_dir: Path | None = None
) -> Iterator[MongoHandle]:
    """Start (or point at) a MongoDB and stop it on exit: `uri` where one is configured."""
    kind = kind or plan(uri)[0]
    if kind not in KINDS:
        raise ValueError(f"unknown MongoDB kind {kind!r}; expected one of {KINDS}")
    if kind == "uri":
        if not uri:
            raise ValueError("discover(kind='uri') needs the uri")
        handle = MongoHandle(uri, "uri", f"MONGODB_URI ({_redact(uri)})")
    else:
        starter = {
            "testcontainers": _start_testcontainers,
            "mongod": _start_mongod,
            "embedded": _start_embedded,
        }[kind]
        handle = starter(data_dir)
    log.info("mongodb ready", kind=handle.kind, uri=_redact(handle.uri))
    try:
        yield handle
    finally:
        handle.stop()


def _redact(uri: str) -> str:
    """Never print a password that sits in a URI."""
    if "@" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _docker_answers() -> bool:
    """True only when an engine replies; the docker CLI alone (as here) is not enough."""
    try:
        import docker  # testcontainers depends on it

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _start_testcontainers(_: Path | None) -> MongoHandle:
    from testcontainers.community.mongodb import MongoDbContainer

    class ReplicaSetMongo(MongoDbContainer):
        """No root user (a replica set with auth would need a keyfile), one member."""

        def _configure(self) -> None:
            pass

    container = ReplicaSetMongo("mongo:7").with_command("--replSet rs0 --bind_ip_all")
    container.start()
    code, out = container.exec(
        [
            "mongosh",
            "--quiet",
            "--eval",
            "try { rs.status().ok } catch (e) { rs.initiate({_id: 'rs0', members: "
            "[{_id: 0, host: 'localhost:27017'}]}).ok }",
        ]
    )
    if code != 0:
        container.stop()
        raise RuntimeError(f"rs.initiate failed in the container: {out!r}")
    host = container.get_container_host_ip()
    port = container.get_exposed_port(27017)
    uri = f"mongodb://{host}:{port}/?directConnection=true"
    _wait_primary(uri)
    return MongoHandle(uri, "testcontainers", "testcontainers mongo:7 replica set", container.stop)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mongod(data_dir: Path | None) -> MongoHandle:
    mongod = shutil.which("mongod")
    assert mongod is not None
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gatequeue-mongod-")
        data_dir = Path(tmp.name)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    proc = subprocess.Popen(
        [
            mongod,
            "--replSet",
            "rs0",
            "--bind_ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--dbpath",
            str(data_dir),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if tmp is not None:
            tmp.cleanup()

    try:
        _initiate(uri, f"127.0.0.1:{port}")
        _wait_primary(uri)
    except Exception:
        stop()
        raise
    return MongoHandle(uri, "mongod", f"mongod on PATH ({mongod})", stop)


def _initiate(uri: str, host: str, timeout: float = 30.0) -> None:
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    deadline = time.monotonic() + timeout
    client: MongoClient[dict[str, Any]]
    with MongoClient(uri, serverSelectionTimeoutMS=2000) as client:
        while True:
            try:
                client.admin.command(
                    "replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": host}]}
                )
                return
            except OperationFailure as exc:
                if exc.code == 23:  # AlreadyInitialized
                    return
                raise
            except PyMongoError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _wait_primary(uri: str, timeout: float = 60.0) -> None:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    deadline = time.monotonic() + timeout
    client: MongoClient[dict[str, Any]]
    with MongoClient(uri, serverSelectionTimeoutMS=2000) as client:
        while True:
            try:
                if client.admin.command("hello").get("isWritablePrimary"):
                    return
            except PyMongoError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"no primary at {uri} after {timeout:.0f} s")
            time.sleep(0.2)


def _start_embedded(data_dir: Path | None) -> MongoHandle:
    from service.mongo.embedded import EmbeddedMongo

    server = EmbeddedMongo(port=0, data_dir=data_dir)
    uri = server.start()
    where = f"data in {data_dir}" if data_dir else "in memory"
    return MongoHandle(uri, "embedded", f"embedded mongo-java-server ({where})", server.stop)

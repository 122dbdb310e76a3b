"""The embedded MongoDB-compatible server: built from deploy/mongo-server on first use, then run.

Machines without Docker or `mongod` still need a MongoDB that does change streams, so gatequeue
brings one: mongo-java-server behind a launcher of ours that closes the gaps PyMongo's asyncio
API runs into (see docs/embedded-mongo.md). This module builds the launcher with the machine's
JDK and Maven into a cache keyed by the sources' hash, starts it as a child process that dies
with us, and hands back its `mongodb://` URI. Everything here blocks; async callers wrap it in
`asyncio.to_thread`.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import structlog

from service import config

log = structlog.get_logger(__name__)

SOURCE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "mongo-server"
_POM = SOURCE_DIR / "pom.xml"
# What the jar is built from. The JUnit tests (src/test) are not: CI runs them, the first-use
# build skips them, and editing a test must not rebuild every developer's server.
_MAIN_SOURCES = SOURCE_DIR / "src" / "main"
JAR_NAME = "gatequeue-mongo-server.jar"

# A small dev server: the C1 compiler and the serial collector start fastest and idle quietest.
JVM_OPTIONS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
)

_ALTERNATIVES = (
    "Alternatives: set MONGODB_URI to a MongoDB replica set, run a Docker engine "
    "(testcontainers then starts MongoDB), or put mongod on PATH."
)


class EmbeddedMongoUnavailable(RuntimeError):
    """The embedded server cannot be built or run here; the message says why and what else works."""


def _cache_root() -> Path:
    return config.cache_home() / "gatequeue" / "mongo-server"


def _build_inputs() -> list[Path]:
    """pom.xml and every file under src/main, in a fixed order."""
    sources = sorted(p for p in _MAIN_SOURCES.rglob("*") if p.is_file())
    if not _POM.is_file() or not sources:
        raise EmbeddedMongoUnavailable(
            f"the embedded MongoDB server's sources are missing ({SOURCE_DIR}); it runs from a "
            f"gatequeue source checkout. {_ALTERNATIVES}"
        )
    return [_POM, *sources]


def _source_digest() -> str:
    """Keyed by content, so an edited launcher is rebuilt and old builds never go stale."""
    digest = hashlib.sha256()
    for path in _build_inputs():
        digest.update(path.relative_to(SOURCE_DIR).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    """The build copy leaves out Maven's output and the tests (see _MAIN_SOURCES)."""
    here = Path(directory)
    if here == SOURCE_DIR:
        return {"target"} & set(names)
    if here == SOURCE_DIR / "src":
        return {"test"} & set(names)
    return set()


def cached_jar() -> Path | None:
    """The built launcher if it is in the cache already (no build, no lock)."""
    jar = _cache_root() / _source_digest() / JAR_NAME
    return jar if jar.is_file() else None


def _missing_tools(*names: str) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


def _unavailable(missing: list[str]) -> EmbeddedMongoUnavailable:
    what = " and ".join(missing)
    return EmbeddedMongoUnavailable(
        f"the embedded MongoDB server needs {what} on PATH (a JDK >= 17 runs it; Maven >= 3.8 "
        f"builds it once, on first use). {_ALTERNATIVES}"
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Several processes (pytest workers, the CLI) may want the same build at once."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _maven(build_dir: Path, *, offline: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    command = ["mvn", "-B", "-q", "--no-transfer-progress"]
    if offline:
        command.append("-o")
    # No tests here (CI runs them): the `tests` profile off, so that the build needs no JUnit or
    # driver artifacts and stays fast; see deploy/mongo-server/pom.xml.
    command += ["-P", "!tests", "-Dmaven.test.skip=true"]
    command += ["-f", str(build_dir / "pom.xml"), "package"]
    return subprocess.run(
        command,
        cwd=build_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def launcher_jar(*, timeout: float = 900.0) -> Path:
    """The runnable (shaded) jar of the launcher, built on first use and cached.

    The build runs in a private copy of the sources under the cache directory, offline first
    (seconds when ~/.m2 holds everything) and online when that fails, and the finished jar is
    moved into place atomically under a file lock, so concurrent callers build it once.
    """
    digest = _source_digest()
    target = _cache_root() / digest
    jar = target / JAR_NAME
    if jar.is_file():
        return jar
    missing = _missing_tools("java", "mvn")
    if missing:
        raise _unavailable(missing)
    target.mkdir(parents=True, exist_ok=True)
    with _file_lock(target / ".build.lock"):
        if jar.is_file():
            return jar
        build_dir = target / f"build-{os.getpid()}"
        shutil.rmtree(build_dir, ignore_errors=True)
        shutil.copytree(SOURCE_DIR, build_dir, ignore=_copy_ignore)
        started = time.monotonic()
        try:
            result = _maven(build_dir, offline=True, timeout=timeout)
            if result.returncode != 0:
                log.info("embedded_mongo_build_online", reason="offline build failed")
                result = _maven(build_dir, offline=False, timeout=timeout)
            built = build_dir / "target" / JAR_NAME
            if result.returncode != 0 or not built.is_file():
                tail = (result.stdout + result.stderr)[-3000:]
                raise EmbeddedMongoUnavailable(
                    f"building the embedded MongoDB server failed (mvn exit {result.returncode}):"
                    f"\n{tail}\n{_ALTERNATIVES}"
                )
            os.replace(built, jar)
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedMongoUnavailable(
                f"building the embedded MongoDB server took longer than {timeout:.0f} s. "
                f"{_ALTERNATIVES}"
            ) from exc
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
        log.info("embedded_mongo_built", jar=str(jar), seconds=round(time.monotonic() - started, 1))
    return jar


class EmbeddedMongo:
    """One embedded server process; it exits with us (stdin EOF, parent pid gone) or on stop()."""

    def __init__(
        self, *, port: int = 0, data_dir: Path | None = None, echo_stderr: bool = False
    ) -> None:
        self.port = port
        self.data_dir = data_dir
        self.echo_stderr = echo_stderr
        self._process: subprocess.Popen[bytes] | None = None
        self._uri: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._stderr_thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        if self._uri is None:
            raise RuntimeError("the embedded MongoDB server is not running; call start() first")
        return self._uri

    @property
    def pid(self) -> int | None:
        """The Java process id while it runs."""
        return self._process.pid if self._process is not None else None

    def command(self, jar: Path) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise _unavailable(["java"])
        command = [java, *JVM_OPTIONS, "-jar", str(jar), "--port", str(self.port)]
        command += ["--watch-stdin", "--parent-pid", str(os.getpid())]
        if self.data_dir is not None:
            command += ["--data-dir", str(Path(self.data_dir).resolve())]
        return command

    def start(self, timeout: float = 120.0) -> str:
        """Build if needed, start Java, and return the URI it prints once it accepts connections."""
        if self._process is not None and self._process.poll() is None:
            return self.uri
        missing = _missing_tools("java")
        if missing:
            raise _unavailable(missing)
        deadline = time.monotonic() + timeout
        jar = launcher_jar()
        started = time.monotonic()
        process = subprocess.Popen(
            self.command(jar),
            stdin=subprocess.PIPE,  # never written: its EOF tells the server we are gone
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # terminal signals reach us; we stop it cleanly
        )
        self._process = process
        self._stderr_tail.clear()
        self._stderr_thread = threading.Thread(
            target=self._pump_stderr, args=(process,), name="embedded-mongo-stderr", daemon=True
        )
        self._stderr_thread.start()
        try:
            line = self._read_uri_line(process, deadline)
        except BaseException:
            self.stop()
            raise
        self._uri = line
        log.info(
            "embedded_mongo_started",
            uri=line,
            pid=process.pid,
            data_dir=str(self.data_dir) if self.data_dir else None,
            seconds=round(time.monotonic() - started, 2),
        )
        return line

    def _read_uri_line(self, process: subprocess.Popen[bytes], deadline: float) -> str:
        assert process.stdout is not None
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EmbeddedMongoUnavailable(
                        "the embedded MongoDB server printed no URI in time; its stderr ends "
                        f"with:\n{self.stderr_tail()}"
                    )
                if not selector.select(timeout=min(remaining, 1.0)):
                    continue
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    code = process.wait()
                    self._join_stderr()
                    raise EmbeddedMongoUnavailable(
                        f"the embedded MongoDB server exited with code {code} before it was "
                        f"ready; its stderr ends with:\n{self.stderr_tail()}"
                    )
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode().strip()
        if not line.startswith("mongodb://"):
            raise EmbeddedMongoUnavailable(f"unexpected first line from the server: {line!r}")
        return line

    def _pump_stderr(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self._stderr_tail.append(line)
            if self.echo_stderr:
                sys.stderr.write(line + "\n")  # one write: other threads log to stderr too
                sys.stderr.flush()
            elif " ERROR " in line or " WARN " in line:
                log.warning("embedded_mongo_stderr", line=line)

    def _join_stderr(self) -> None:
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=5)

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self._stderr_tail)[-lines:])

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code once the process ended, None while it runs (after `timeout`)."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server shuts down cleanly and flushes its data file), then SIGKILL."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded_mongo_kill", pid=process.pid)
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        self._join_stderr()
        if process.stderr is not None:
            process.stderr.close()
        log.info("embedded_mongo_stopped", pid=process.pid, code=process.returncode)
        self._process = None
        self._uri = None

    def __enter__(self) -> EmbeddedMongo:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_foreground(port: int, data_dir: Path | None) -> int:
    """`gatequeue mongo`: the URI on stdout, logs on stderr, until Ctrl-C or SIGTERM."""
    try:
        if cached_jar() is None:
            print(
                "building the embedded MongoDB server (first use, ~1 min)...",
                file=sys.stderr,
                flush=True,
            )
            launcher_jar()
        server = EmbeddedMongo(port=port, data_dir=data_dir, echo_stderr=True)
        uri = server.start()
    except EmbeddedMongoUnavailable as exc:
        print(f"gatequeue mongo: {exc}", file=sys.stderr, flush=True)
        return 1
    print(uri, flush=True)

    done = threading.Event()
    exit_code: list[int] = []

    def watch() -> None:
        code = server.wait()
        if code is not None:
            exit_code.append(code)
        done.set()

    threading.Thread(target=watch, name="embedded-mongo-wait", daemon=True).start()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    if exit_code and exit_code[0] not in (0, 143, -signal.SIGTERM):
        print(f"gatequeue mongo: the server exited with code {exit_code[0]}", file=sys.stderr)
        return exit_code[0]
    return 0

"""The server-side commands: `up` (everything on one machine), `mongo`, `serve`, `worker`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import socket
import sys
from pathlib import Path
from typing import Any

from service.cli.errors import PortInUse
from service.config import DEFAULT_API_PORT, DEFAULT_DATA_DIR, Settings
from service.errors import ConfigError
from service.runloop import run_until_signal

STATE_DIR = Path(".gatequeue")
INSECURE_OPEN_HELP = (
    "serve a non-loopback address without any token (anyone who reaches it may use it)"
)
PORT_HELP = "the API's port (default: %(default)s); it must be free"


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse where a listener holds (host, port). Binds as aiohttp will (with
    SO_REUSEADDR), so a port left in TIME_WAIT by a stopped server counts as free."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # the server's own start says what is wrong with the host
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(host, port) from None
                raise


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="MongoDB + API + one worker on this machine")
    up.add_argument("--host", default="127.0.0.1", help="the API's address (default: %(default)s)")
    up.add_argument("--port", type=int, default=DEFAULT_API_PORT, help=PORT_HELP)
    up.add_argument(
        "--state-dir",
        type=Path,
        default=STATE_DIR,
        help="where the embedded MongoDB keeps its data and the worker its files",
    )
    up.add_argument("--mongodb-uri", help="use this MongoDB instead of the embedded one")
    up.add_argument("--insecure-open", action="store_true", help=INSECURE_OPEN_HELP)
    up.add_argument(
        "--demo",
        action="store_true",
        help="submit one small training run on the digits data set once everything is up",
    )
    up.set_defaults(func=cmd_up)

    mongo = sub.add_parser("mongo", help="the embedded MongoDB-compatible server")
    mongo.add_argument("--port", type=int, default=27017, help="0 picks a free port")
    where = mongo.add_mutually_exclusive_group()
    where.add_argument("--memory", action="store_true", help="keep nothing on disk (default)")
    where.add_argument("--data-dir", type=Path, help="keep data in this folder")
    mongo.set_defaults(func=cmd_mongo)

    serve = sub.add_parser("serve", help="the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_API_PORT, help=PORT_HELP)
    serve.add_argument("--mongodb-uri", help="default: $MONGODB_URI")
    serve.add_argument("--insecure-open", action="store_true", help=INSECURE_OPEN_HELP)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="one worker with the configured GPU slots")
    worker.add_argument("--mongodb-uri", help="default: $MONGODB_URI")
    worker.add_argument("--gpus", help="slots: a count, device ids (0,3) or 'cpu'")
    worker.add_argument(
        "--id", dest="worker_id", help="worker id (default: $GATEQUEUE_WORKER_ID or host:slots)"
    )
    worker.set_defaults(func=cmd_worker)


def _need_uri(settings: Settings) -> str:
    if not settings.mongodb_uri:
        raise SystemExit(
            "gatequeue: no MongoDB: set MONGODB_URI or pass --mongodb-uri "
            "(or run `gatequeue up` for everything on one machine)"
        )
    return settings.mongodb_uri


def cmd_mongo(args: argparse.Namespace, settings: Settings) -> int:
    from service.mongo.embedded import EmbeddedMongoUnavailable, run_foreground

    try:
        return run_foreground(args.port, None if args.memory else args.data_dir)
    except EmbeddedMongoUnavailable as exc:
        print(f"gatequeue: {exc}", file=sys.stderr)
        return 1


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from service.api.app import refuse_open, serve
    from service.api.errors import OpenApiRefused

    _need_uri(settings)
    try:
        refuse_open(settings, args.host, insecure_open=args.insecure_open)
        check_port_free(args.host, args.port)
    except (OpenApiRefused, PortInUse) as exc:
        print(f"gatequeue: {exc}", file=sys.stderr)
        return 2
    return run_until_signal(
        lambda: serve(settings, args.host, args.port, insecure_open=args.insecure_open)
    )


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from service.config import parse_gpus
    from service.worker import run_worker

    _need_uri(settings)
    if args.gpus:
        try:
            settings = dataclasses.replace(settings, gpus=parse_gpus(args.gpus))
        except ConfigError as exc:
            print(f"gatequeue: {exc}", file=sys.stderr)
            return 2
    if args.worker_id:
        settings = dataclasses.replace(settings, worker_id=args.worker_id)
    return run_until_signal(lambda: run_worker(settings))


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from service.api.app import refuse_open
    from service.api.errors import OpenApiRefused
    from service.mongo import discovery as mongo_discovery
    from service.mongo.embedded import EmbeddedMongoUnavailable

    try:
        refuse_open(settings, args.host, insecure_open=args.insecure_open)
        check_port_free(args.host, args.port)
    except (OpenApiRefused, PortInUse) as exc:
        print(f"gatequeue: {exc}", file=sys.stderr)
        return 2
    if args.demo and settings.api_token is None and settings.tokens_file is not None:
        print(
            "gatequeue: --demo submits a job, which needs a token: with only "
            "GATEQUEUE_TOKENS_FILE set, this process has none to submit with. Set "
            "GATEQUEUE_API_TOKEN (an admin token) as well, or leave out --demo and submit "
            "with `gatequeue submit --token ...`",
            file=sys.stderr,
        )
        return 2
    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    if settings.data_dir == DEFAULT_DATA_DIR:  # GATEQUEUE_DATA_DIR not set: the state dir's
        settings = dataclasses.replace(settings, data_dir=state / "data")
    kind = "uri" if settings.mongodb_uri else "embedded"
    if kind == "embedded":
        print(
            "gatequeue: starting the embedded MongoDB (the first start builds it, ~1 min)",
            file=sys.stderr,
        )
    try:
        with mongo_discovery.discover(
            settings.mongodb_uri, kind=kind, data_dir=state / "mongo"
        ) as mongo:
            settings = dataclasses.replace(settings, mongodb_uri=mongo.uri)
            return run_until_signal(lambda: _up(settings, args, mongo.description))
    except EmbeddedMongoUnavailable as exc:
        print(f"gatequeue: {exc}", file=sys.stderr)
        return 1
    except PortInUse as exc:  # taken between the check and the API's start
        print(f"gatequeue: {exc}", file=sys.stderr)
        return 2


async def _up(settings: Settings, args: argparse.Namespace, mongo_description: str) -> None:
    from service.api.app import serve
    from service.worker import run_worker

    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    api = asyncio.create_task(
        serve(settings, args.host, args.port, started=listening.set_result,
              insecure_open=args.insecure_open),
        name="api",
    )  # fmt: skip
    tasks = [api, asyncio.create_task(run_worker(settings), name="worker")]
    try:
        # Readiness is asked of the server this process started, at the address its own
        # socket listens on: never of whatever else answers on the port.
        url = await _wait_until_listening(listening, tasks)
        await _wait_until_ready(url, tasks)
        print(f"gatequeue is up: {url}  (MongoDB: {mongo_description}; Ctrl-C stops)", flush=True)
        if args.demo:
            tasks.append(asyncio.create_task(_submit_demo(url, settings), name="demo"))
        done, _ = await asyncio.wait(
            [t for t in tasks if t.get_name() != "demo"], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            task.result()  # surface a crash of the API or the worker
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(args.host, args.port) from None
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_until_listening(
    listening: asyncio.Future[str], tasks: list[asyncio.Task[None]]
) -> str:
    """The URL our API listens on, or the error of whichever task stopped first."""
    waiting: list[asyncio.Future[Any]] = [listening, *tasks]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if listening.done():
        return listening.result()
    for task in tasks:
        if task.done():
            task.result()
            raise RuntimeError(f"{task.get_name()} stopped during start-up")
    raise AssertionError("unreachable")  # pragma: no cover


async def _wait_until_ready(url: str, tasks: list[asyncio.Task[None]]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            for task in tasks:
                if task.done():
                    task.result()
                    raise RuntimeError(f"{task.get_name()} stopped during start-up")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the API at {url} did not become ready in 60 s")


DEMO_JOB: dict[str, Any] = {
    "gateOptimizer": "sparsemax_noise",
    "gates": 2000,
    "networkLayers": 4,
    "grouping": 10,
    "groupSumTau": 30,
    "residualLayers": 2,
    "noiseTemp": 0.2,
    "epochs": 10,
    "dataset": "digits",
    "name": "demo: digits, sparsemax_noise",
}


async def _submit_demo(url: str, settings: Settings) -> None:
    """Submit the demo run and report its end; a refusal is printed, not swallowed: the
    system stays up either way."""
    from service.client import GateQueueClient, GateQueueError

    async with GateQueueClient(url, token=settings.api_token) as client:
        try:
            job = await client.submit(**DEMO_JOB)
        except GateQueueError as exc:
            print(f"gatequeue: the demo run was not submitted: {exc}", file=sys.stderr, flush=True)
            return
        print(f"submitted a demo training run: {url}#/jobs/{job['id']}", flush=True)
        final = await client.wait(job["id"])
        metrics = final.get("latestMetrics") or {}
        print(
            f"demo run {final['status']}: "
            + " ".join(f"{k}={v}" for k, v in metrics.items() if k.startswith("test")),
            flush=True,
        )

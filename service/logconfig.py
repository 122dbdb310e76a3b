"""structlog set-up: JSON lines in production, coloured key=value in a terminal.

gatequeue's own loggers render straight to stderr (structlog's native path, JSON by orjson):
the API writes one access-log line per request, and going through the standard library's
logging costs ~105 us a line against ~30 us this way (bench/api_submit.py, docs/api.md).
Loggers of the standard library (aiohttp, pymongo, asyncio) still reach the same stream
through a `ProcessorFormatter`, with the same fields and the same renderer.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import orjson
import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


class _Sink:
    """A logger of one name writing rendered lines to a stream; `name` feeds
    `add_logger_name`. The lock keeps lines whole when threads log (asyncio.to_thread)."""

    _lock = threading.Lock()

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream = stream
        self.name = name

    def msg(self, message: str | bytes) -> None:
        text = message.decode() if isinstance(message, bytes) else message
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _SinkFactory:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _Sink:
        name = str(args[0]) if args else "gatequeue"
        return _Sink(self._stream, name)


def _json_renderer() -> structlog.types.Processor:
    def dumps(event: Any, **_: Any) -> str:
        return orjson.dumps(event, default=str).decode()

    return structlog.processors.JSONRenderer(serializer=dumps)


# The API's access log: one line per request (service.api.middleware).
ACCESS_LOGGER = "service.api.access"


def _requests_at_debug(numeric: int) -> structlog.types.Processor:
    """Request lines count as debug: dropped unless the level is debug (where they are
    labelled so). A person at a terminal reads the start-up lines; a request per page load
    would bury them."""

    def demote(logger: Any, method: str, event: structlog.types.EventDict) -> Any:
        if event.get("logger") == ACCESS_LOGGER and method == "info":
            if numeric > logging.DEBUG:
                raise structlog.DropEvent
            event["level"] = "debug"
        return event

    return demote


def configure_logging(
    fmt: str = "auto", level: str = "info", *, request_lines_at_debug: bool = False
) -> None:
    """`auto` picks the console renderer when stderr is a terminal, JSON otherwise, so
    containers and CI get machine-readable lines without a flag. `request_lines_at_debug`:
    `gatequeue up` on a terminal."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    numeric = LEVELS.get(level.lower(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if request_lines_at_debug:
        shared.insert(3, _requests_at_debug(numeric))
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = _json_renderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # The driver's own debug chatter drowns the service's lines.
    logging.getLogger("pymongo").setLevel(max(logging.INFO, numeric))

    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=_SinkFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )

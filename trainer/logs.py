"""structlog for the trainer: plain one-line records on stdout, flushed per line.

The trainer runs as a subprocess whose stdout the worker stores line by line; colours and
multi-line layouts would only garble the job log, and an unflushed line arrives late.
"""

from __future__ import annotations

import structlog


def configure() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0, pad_level=False),
        ],
        # No file given: each logger writes to the sys.stdout of the moment (tests that run
        # the trainer in-process swap it; a pinned stream would outlive them, closed).
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def get_logger() -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger("trainer")

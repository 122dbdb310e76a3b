"""structlog for the trainer: plain one-line records on stdout, flushed per line.

The trainer runs as a subprocess whose stdout the worker stores line by line; colours and
multi-line layouts would only garble the job log, and an unflushed line arrives late.
"""

from __future__ import annotations

import sys

import structlog


def configure() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0, pad_level=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger() -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger("trainer")

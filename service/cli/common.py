"""What every client command of `gatequeue` shares: the API flags, the exit statuses, one
client per command with its errors turned into exits, and safe, coloured text."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from rich.console import Console

from service import config
from service.cli.terminal import markup_safe
from service.client import DEFAULT_API, GateQueueClient, GateQueueConnectionError, GateQueueError
from service.config import Settings
from service.jobs.status import Status

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_REFUSED = 2
EXIT_UNREACHABLE = 3

STATUS_STYLE: dict[str, str] = {
    Status.PENDING: "yellow",
    Status.RUNNING: "cyan",
    Status.SUCCEEDED: "green",
    Status.FAILED: "red",
    Status.CANCELLED: "magenta",
}
# Metrics shown first (when present) in progress lines and tables.
METRIC_ORDER = (
    "train_loss", "train_acc", "val_acc", "val_acc_discrete", "test_acc", "test_acc_discrete",
    "epoch_s",
)  # fmt: skip

Command = Callable[[argparse.Namespace, Settings], int]


def api_parent() -> argparse.ArgumentParser:
    """The `--api` and `--token` flags, for every command that talks to the API."""
    api = argparse.ArgumentParser(add_help=False)
    group = api.add_argument_group("API")
    group.add_argument(
        "--api",
        default=config.client_api() or DEFAULT_API,
        metavar="URL",
        help="the gatequeue API (default: $GATEQUEUE_API or %(default)s)",
    )
    group.add_argument(
        "--token", help="API token (default: $GATEQUEUE_API_TOKEN, when the API needs one)"
    )
    return api


def client_command(
    command: Callable[[argparse.Namespace, Settings, GateQueueClient], Awaitable[int]],
) -> Command:
    """Wrap an async command as `(args, settings) -> int`: one client, errors to exits."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        token = args.token or settings.api_token

        async def main() -> int:
            async with GateQueueClient(args.api, token=token) as client:
                return await command(args, settings, client)

        return run_client(main())

    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    return run


def run_client(coro: Coroutine[Any, Any, int]) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        return asyncio.run(coro)
    except GateQueueConnectionError as exc:
        err.print(f"[red]gatequeue:[/] {exc}", markup=True)
        err.print(
            "  is the API running? start one with `gatequeue up` or set --api / $GATEQUEUE_API"
        )
        return EXIT_UNREACHABLE
    except GateQueueError as exc:
        err.print(f"[red]gatequeue:[/] {escape(str(exc))}", markup=True)
        if exc.status == 401:
            err.print("  pass --token or set $GATEQUEUE_API_TOKEN")
        return EXIT_REFUSED


def escape(text: str) -> str:
    """Stored text, shown safely: control characters escaped, rich markup too."""
    return markup_safe(text, multiline=True)


def status_markup(status: str | None) -> str:
    style = STATUS_STYLE.get(status or "", "white")
    return f"[{style}]{status}[/]"


def num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def duration(seconds: float | None) -> str:
    """`45s`, `3m05s`, `2h07m`: an ETA as people read it ("" when unknown)."""
    if seconds is None:
        return ""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def warning_lines(item: dict[str, Any]) -> list[str]:
    """A job's (or sweep's) warnings, one printable line each, in yellow."""
    return [
        f"[yellow]warning ({escape(str(w.get('code')))}): {escape(str(w.get('message')))}[/]"
        for w in item.get("warnings") or []
    ]

"""`gatequeue usage [--since WHEN] [--json]`: what each user and sweep used (`GET /usage`):
jobs by status, slot-hours on GPUs and CPUs, and the bytes their logs and files take.
An admin token sees everyone; any other token itself."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from service.cli.common import EXIT_OK, api_parent, client_command, escape
from service.client import GateQueueClient
from service.config import Settings


def add_commands(subparsers: Any) -> None:
    usage = subparsers.add_parser(
        "usage", parents=[api_parent()], help="jobs, slot-hours and storage per user and sweep",
        description="Per user and per sweep: jobs by status, slot-hours (Running time x "
        "slots, GPU and CPU apart), log and file bytes stored (docs/api.md, Usage).",
    )  # fmt: skip
    usage.add_argument(
        "--since",
        metavar="WHEN",
        help="the period's start, ISO-8601 (2026-01-01, 2026-01-01T09:00Z)",
    )
    usage.add_argument("--json", action="store_true", help="the API's JSON as it came")
    usage.set_defaults(func=client_command(cmd_usage))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # unreachable


def _jobs(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "none"


def _table(title: str, rows: list[dict[str, Any]], first: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in (first, "jobs", "GPU h", "CPU h", "logs", "files"):
        table.add_column(name, justify="right" if name in ("GPU h", "CPU h") else "left")
    for row in rows:
        key = row.get("sweepId") if first == "sweep" else row["user"]
        table.add_row(
            escape(str(key if key is not None else "(open API)")),
            _jobs(row["jobs"]),
            f"{row['slotHours']['gpu']:.2f}",
            f"{row['slotHours']['cpu']:.2f}",
            _size(row["logBytes"]),
            _size(row["fileBytes"]),
        )
    return table


async def cmd_usage(args: argparse.Namespace, settings: Settings, client: GateQueueClient) -> int:
    report = await client.usage(args.since)
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    out = Console(highlight=False, soft_wrap=True)
    since = report["since"] or "the beginning"
    out.print(_table(f"usage since {since}, by user", report["users"], "user"))
    if report["sweeps"]:
        out.print(_table("by sweep", report["sweeps"], "sweep"))
    return EXIT_OK

"""The `gatequeue` command: `service.cli.server` has the server-side commands,
`service.cli.jobs`, `service.cli.sweeps` and `service.cli.data` the client ones (sharing
`service.cli.common`),
`service.cli.tokens` the token file's.

Every command reads the environment variables of docs/design.md ("Configuration") through
`Settings.from_env()`; flags given on the command line win over them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from service.config import Settings
from service.errors import ConfigError
from service.logconfig import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"gatequeue: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "mongodb_uri", None):
        settings = dataclasses.replace(settings, mongodb_uri=args.mongodb_uri)
    configure_logging(
        settings.log_format,
        settings.log_level,
        request_lines_at_debug=getattr(args, "request_lines_at_debug", False)
        and sys.stderr.isatty(),
    )
    try:
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    from service.cli import data, jobs, server, sweeps, tokens, usage

    parser = argparse.ArgumentParser(
        prog="gatequeue",
        description="Queue and watch training runs of differentiable logic gate networks.",
    )
    sub = parser.add_subparsers(metavar="COMMAND")
    server.add_commands(sub)
    jobs.add_commands(sub)
    sweeps.add_commands(sub)
    tokens.add_commands(sub)
    data.add_commands(sub)
    usage.add_commands(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())

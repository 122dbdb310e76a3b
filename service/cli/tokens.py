"""`gatequeue token add|ls|rm`: named tokens in GATEQUEUE_TOKENS_FILE (docs/security.md).

The file is local (or a mounted Secret the API reads): these commands never talk to the
API, which picks a changed file up within seconds. `add` prints the new token alone on its
last line, so `TOKEN=$(gatequeue token add alice --role submit | tail -n1)` captures it; it
is shown this once and stored only as its hash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service import tokens
from service.config import Settings
from service.errors import TokenFileError
from service.tokens import Role


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser("token", help="named API tokens (GATEQUEUE_TOKENS_FILE)")
    token.add_argument(
        "--file", type=Path, help="the tokens file (default: $GATEQUEUE_TOKENS_FILE)"
    )
    verbs = token.add_subparsers(metavar="VERB")
    add = verbs.add_parser("add", help="create (or replace) a token; prints it once")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--role", required=True, choices=[r.label for r in Role],
        help="read: list and follow; submit: also submit and cancel its own jobs; "
        "admin: also cancel anyone's",
    )  # fmt: skip
    add.set_defaults(func=cmd_add)
    ls = verbs.add_parser("ls", help="the tokens' names and roles (never the tokens)")
    ls.set_defaults(func=cmd_ls)
    rm = verbs.add_parser("rm", help="remove a token (its sessions end too)")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=cmd_rm)

    def usage(args: argparse.Namespace, settings: Settings) -> int:
        token.print_help()
        return 2

    token.set_defaults(func=usage)


def _file(args: argparse.Namespace, settings: Settings) -> Path:
    path = args.file or settings.tokens_file
    if path is None:
        raise SystemExit(
            "gatequeue: no tokens file: set GATEQUEUE_TOKENS_FILE (the API reads it too) "
            "or pass --file"
        )
    return Path(path)


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    path = _file(args, settings)
    try:
        token = tokens.add(path, args.name, Role.parse(args.role))
    except TokenFileError as exc:
        print(f"gatequeue: {exc}", file=sys.stderr)
        return 2
    print(f"token {args.name!r} ({args.role}) stored as a hash in {path}; it is shown once:")
    print(token)
    return 0


def cmd_ls(args: argparse.Namespace, settings: Settings) -> int:
    try:
        entries = tokens.read(_file(args, settings))
    except TokenFileError as exc:
        print(f"gatequeue: {exc}", file=sys.stderr)
        return 2
    if not entries:
        print("no tokens")
    for entry in entries:
        print(f"{entry.name:<24} {entry.role.label:<7} {entry.created_at}")
    return 0


def cmd_rm(args: argparse.Namespace, settings: Settings) -> int:
    try:
        removed = tokens.remove(_file(args, settings), args.name)
    except TokenFileError as exc:
        print(f"gatequeue: {exc}", file=sys.stderr)
        return 2
    if not removed:
        print(f"gatequeue: no token named {args.name!r}", file=sys.stderr)
        return 2
    print(f"token {args.name!r} removed")
    return 0

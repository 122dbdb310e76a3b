"""Options as command-line flags, one rule for every command line: `python -m trainer`,
`gatequeue submit` and `gatequeue sweep` (docs/design.md, "How to add a training option").

An option is the flag `flag_of(name)` (`gateOptimizer` -> `--gate-optimizer`) with the
attribute `dest_of(name)`, its help, `N`/`X`/`TEXT` for a number or text and `NAME` for a
choice (its help names the choices). A number is read as one: `--gates x` is refused naming
the flag, the same way on each command line.

The trainer's flags carry their option's value: omitted, the option's default. A client's
flags (`request=True`) are what a request sets: omitted, they stay `None` and out of the
request body, so the API's defaults apply (the help names them).

No torch here: the client commands import it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from trainer.options import Option

METAVARS: dict[type, str] = {int: "N", float: "X", str: "TEXT"}
CHOICE_METAVAR = "NAME"
OBJECT_METAVAR = "URL|JSON"  # an object option (`notify`): its model reads the text


def metavar(o: Option) -> str:
    if o.choices:
        return CHOICE_METAVAR
    return METAVARS.get(o.kind, OBJECT_METAVAR)  # type: ignore[call-overload]

Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def number(kind: type) -> Callable[[str], Any]:
    """argparse's type for a numeric flag: only the spelling is checked here, bounds are the
    options model's (one check for the API and the trainer)."""

    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None

    parse.__name__ = kind.__name__
    return parse


def within_bounds(o: Option) -> Callable[[str], Any]:
    """A number flag checked against its option's bounds where argparse reads it, for options
    that no model checks later (the trainer's run control options)."""
    parse = number(o.kind)

    def check(text: str) -> Any:
        value = parse(text)
        low_ok = (o.ge is None or value >= o.ge) and (o.gt is None or value > o.gt)
        high_ok = o.le is None or value <= o.le
        if not (low_ok and high_ok):  # NaN fails too
            bounds = " and ".join(
                b
                for b in (
                    f">= {o.ge:g}" if o.ge is not None else "",
                    f"> {o.gt:g}" if o.gt is not None else "",
                    f"<= {o.le:g}" if o.le is not None else "",
                )
                if b
            )
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {text}")
        return value

    check.__name__ = o.kind.__name__
    return check


def flag_kwargs(
    o: Option, *, request: bool = False, required: bool = False, bounded: bool = False
) -> dict[str, Any]:
    """The keyword arguments of `add_argument(o.flag, ...)`.

    `request`: a client's flag (default `None`, the API's default in the help). `required`:
    the command cannot go without it. `bounded`: check a number's bounds here.
    """
    kwargs: dict[str, Any] = {"dest": o.dest, "help": o.help}
    if request:
        kwargs["default"] = None
        if not required and not o.request_required and o.default is not None:
            kwargs["help"] = f"{o.help} (default {o.default})"
        elif o.default_text:
            kwargs["help"] = f"{o.help} (default {o.default_text})"
    else:
        kwargs["default"] = o.default  # the parser's formatter shows it
        if o.default_text:
            # Say what the null default means; `%(default).0s` prints nothing but keeps
            # ArgumentDefaultsHelpFormatter from appending "(default: None)".
            kwargs["help"] = f"{o.help} (default: {o.default_text})%(default).0s"
    if required:
        kwargs["required"] = True
    if o.choices:
        kwargs |= {"choices": o.choices, "metavar": CHOICE_METAVAR}
    elif isinstance(o.kind, type) and issubclass(o.kind, BaseModel):
        kwargs |= {"type": o.kind.from_flag, "metavar": OBJECT_METAVAR}  # type: ignore[attr-defined]
    elif o.kind in (int, float):
        kwargs |= {"type": within_bounds(o) if bounded else number(o.kind)}
        kwargs["metavar"] = METAVARS[o.kind]
    else:
        kwargs |= {"type": o.kind, "metavar": METAVARS[o.kind]}
    return kwargs


def add_option_flag(
    parser: Parser,
    o: Option,
    *,
    request: bool = False,
    required: bool = False,
    bounded: bool = False,
) -> None:
    """Add `o` as a flag (see `flag_kwargs`)."""
    parser.add_argument(o.flag, **flag_kwargs(o, request=request, required=required,
                                              bounded=bounded))  # fmt: skip


def given(args: argparse.Namespace, options: Iterable[Option]) -> dict[str, Any]:
    """The options given on a client's command line, by name: a request body's fields."""
    values = {o.name: getattr(args, o.dest, None) for o in options}
    return {name: value for name, value in values.items() if value is not None}

"""`python -m trainer`: the command line, its validation, and the run it starts.

The training flags are generated from trainer.options (`gateOptimizer` -> `--gate-optimizer`),
with its defaults and its checks; the rest are options of this run only. Invalid arguments
exit 2 with a message on stderr before any work; a run that fails later (missing data)
exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from trainer import supervision
from trainer.data import DataError
from trainer.layer import BACKENDS
from trainer.options import TRAINING_OPTIONS, Option, TrainingOptions, flag_of


def _cli_number(kind: type) -> Callable[[str], Any]:
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


def _positive(kind: type) -> Callable[[str], Any]:
    parse = _cli_number(kind)

    def positive(text: str) -> Any:
        value = parse(text)
        if not value > 0:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    positive.__name__ = kind.__name__
    return positive


def add_option_flag(group: argparse._ArgumentGroup | argparse.ArgumentParser, o: Option) -> None:
    kwargs: dict[str, Any] = {"dest": o.dest, "default": o.default, "help": o.help}
    if o.choices:
        kwargs |= {"choices": o.choices, "metavar": "NAME"}
    else:
        kwargs["type"] = _cli_number(o.kind) if o.kind in (int, float) else o.kind
        kwargs["metavar"] = {int: "N", float: "X", str: "TEXT"}[o.kind]
    group.add_argument(o.flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train one differentiable logic gate network and print one EPOCH line "
        "per epoch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    training = p.add_argument_group("training options (the fields of a job request)")
    for option in TRAINING_OPTIONS:
        add_option_flag(training, option)
    run = p.add_argument_group("this run")
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where mnist and cifar10 files are (mnist is downloaded there)",
    )
    run.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where network.json goes; default runs/<dataset>-<UTC time>",
    )
    run.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present"
    )
    run.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="layer kernel: auto = difflogic on CUDA where it imports, else ours "
        "(cpp on CPU where it compiles, else torch)",
    )
    run.add_argument(
        "--threads",
        type=_positive(int),
        default=None,
        help="CPU threads for torch and our kernel (default: torch's choice)",
    )
    run.add_argument(
        "--progress-s",
        type=_positive(float),
        default=10.0,
        help="seconds between progress lines within an epoch",
    )
    return p


def _flag_message(error: Any) -> str:
    if error["type"] == "cross_field":  # already spelled with flags
        return str(error["msg"])
    return f"{flag_of(str(error['loc'][0]))}: {error['msg']} (got {error['input']!r})"


def validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The training options through the same model the API validates with; p.error exits 2
    naming the flag."""
    values = {o.name: getattr(args, o.dest) for o in TRAINING_OPTIONS}
    try:
        TrainingOptions.model_validate(values, context={"spell": flag_of})
    except ValidationError as exc:
        p.error(
            "; ".join(
                f"{flag_of(str(e['loc'][0]))}: {e['msg']}"
                if e["type"] != "cross_field"
                else e["msg"]
                for e in exc.errors(include_url=False)
            )
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.output_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        args.output_dir = Path("runs") / f"{args.dataset}-{stamp}"


def main(argv: list[str] | None = None) -> int:
    # First of all: under a worker, a trainer that outlives its lease stops itself, even
    # while torch is still loading.
    supervised = supervision.start()
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(parser, args)
    from trainer.loop import ConfigError, run  # torch-heavy imports after argument checks

    try:
        run(args, supervised)
    except ConfigError as exc:
        parser.error(str(exc))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0

"""`python -m trainer`: the command line, its validation, and the run it starts.

The training flags are generated from trainer.options (`gateOptimizer` -> `--gate-optimizer`),
with its defaults and its checks; the rest are options of this run only (they never change
`hyperparameters_hash`, so a checkpoint resumes under other values of them). Invalid
arguments exit 2 with a message on stderr before any work; a run that fails later (missing
data, a loss that is no longer finite) exits 1; an unusable `--resume-from` exits 65 and a
run stopped by checkpoint-and-stop 76 (every code: trainer/protocol.py).
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

from trainer import protocol, supervision
from trainer.data import DataError
from trainer.device import out_of_memory_errors
from trainer.errors import BadCheckpoint, CheckpointedStop, Diverged, RunConfigError
from trainer.flags import add_option_flag, number
from trainer.layer import BACKENDS
from trainer.options import (
    RUN_CONTROL_OPTIONS,
    TRAINING_OPTIONS,
    TrainingOptions,
    dest_of,
    flag_of,
    resolve_defaults,
)
from trainer.presets import PRESETS
from trainer.presets import apply as apply_preset


def _positive(kind: type) -> Callable[[str], Any]:
    parse = number(kind)

    def positive(text: str) -> Any:
        value = parse(text)
        if not value > 0:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    positive.__name__ = kind.__name__
    return positive


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
        "--preset",
        choices=list(PRESETS),
        help="start from a named conv configuration (python -m trainer.presets lists them); "
        "training flags given beside it win",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where mnist and cifar10 files are (mnist is downloaded there)",
    )
    run.add_argument(
        "--dataset-file",
        type=Path,
        default=None,
        help="the encoded file of a registered data set (trainer/data/encoded.py; a worker "
        "passes its cached copy): --dataset then only names it",
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
    run.add_argument(
        "--no-circuit",
        action="store_true",
        help="do not compile, verify and time the network's circuit after training "
        "(network.c/.h/.v and the CIRCUIT line)",
    )
    durable = p.add_argument_group('checkpoints (docs/trainer.md, "Checkpoints and resume")')
    durable.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where checkpoints are written (the newest two are kept); none without it",
    )
    for option in RUN_CONTROL_OPTIONS:  # --checkpoint-interval-s: a run option of the job
        add_option_flag(durable, option, bounded=True)
    durable.add_argument(
        "--stop-epoch",
        type=_positive(int),
        default=None,
        metavar="K",
        help="after epoch K (below --epochs), write a checkpoint and exit 76: a sweep's "
        "scheduler decides whether the run goes on (resumed from it) or ends there",
    )
    durable.add_argument(
        "--resume-from",
        type=Path,
        default=None,
        metavar="FILE",
        help="continue the run saved in this checkpoint (same training options); "
        "exits 65 if it is unusable",
    )
    return p


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
    # A null that stands for a chosen value (the gate optimizer's learning rate) is run,
    # hashed and reported as that value.
    for name, value in resolve_defaults(values).items():
        setattr(args, dest_of(name), value)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.output_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        args.output_dir = Path("runs") / f"{args.dataset}-{stamp}"


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: Python's MemoryError, torch's CUDA OutOfMemoryError (a
    RuntimeError; its name differs across the torch versions we allow, see
    trainer.device.out_of_memory_errors), its CPU allocator's "can't allocate memory"
    RuntimeError, or a C++ std::bad_alloc surfacing as one."""
    if isinstance(exc, out_of_memory_errors()):
        return True
    text = str(exc)
    return (
        "can't allocate memory" in text
        or "out of memory" in text.lower()
        or "bad_alloc" in text  # a C++ allocation in an extension, turned into RuntimeError
    )


def main(argv: list[str] | None = None) -> int:
    # First of all: under a worker, a trainer that outlives its lease stops itself, even
    # while torch is still loading.
    supervised = supervision.start()
    # checkpoint-and-stop by SIGUSR1 as well as on stdin; handled from here on, so that a
    # signal during the slow imports below does not kill the run (SIGUSR1's default).
    stop = supervision.StopRequest(supervised)
    restore_signal = stop.install_signal()
    try:
        parser = build_parser()
        apply_preset(parser, argv)
        args = parser.parse_args(argv)
        validate(parser, args)
        from trainer.loop import run  # torch-heavy imports after argument checks

        try:
            run(args, supervised, stop)
        except RunConfigError as exc:
            parser.error(str(exc))
        except (DataError, Diverged) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return protocol.EXIT_FAILURE
        except BadCheckpoint as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return protocol.EXIT_BAD_CHECKPOINT
        except CheckpointedStop:
            return protocol.EXIT_CHECKPOINTED
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr, flush=True)
            return protocol.EXIT_INTERRUPTED
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            print(f"error: out of memory: {exc}".strip(), file=sys.stderr, flush=True)
            return protocol.EXIT_OUT_OF_MEMORY
        return protocol.EXIT_SUCCESS
    finally:
        restore_signal()

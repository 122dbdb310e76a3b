"""`python -m trainer`: the command line, its validation, and the run it starts.

Flags are the request fields of DESIGN.md in kebab-case (`gateOptimizer` ->
`--gate-optimizer`); defaults are the seed's example request. Invalid arguments exit 2 with
a message on stderr before any work; a run that fails later (missing data) exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.data import DATASETS, DataError
from trainer.data.datasets import CLASSES
from trainer.layer import BACKENDS
from trainer.parametrizations import GATE_OPTIMIZERS

DEFAULT_RESIDUAL_LAYERS = 4


def _number(kind: type, low: float, *, strict: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if value != value or (value <= low if strict else value < low):  # NaN fails too
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {low:g}, got {text}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train one differentiable logic gate network and print one EPOCH line "
        "per epoch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--gate-optimizer",
        choices=GATE_OPTIMIZERS,
        default="sparsemax_noise",
        metavar="NAME",
        help=f"how each neuron's 16 gate logits become probabilities: {', '.join(GATE_OPTIMIZERS)}",
    )
    p.add_argument(
        "--gates",
        type=_number(int, 1),
        default=3332,
        help="gates per layer; the last layer is rounded up to a multiple of --grouping",
    )
    p.add_argument("--network-layers", type=_number(int, 1), default=4, help="logic layers")
    p.add_argument(
        "--grouping",
        type=_number(int, 1),
        default=10,
        help="GroupSum's k; must equal the data set's number of classes",
    )
    p.add_argument(
        "--group-sum-tau",
        type=_number(float, 0, strict=True),
        default=100.0,
        help="GroupSum temperature: class scores are group sums / tau",
    )
    p.add_argument(
        "--residual-layers",
        type=_number(int, 0),
        default=None,
        help="leading layers initialised as pass-through (gate A); default "
        f"min({DEFAULT_RESIDUAL_LAYERS}, --network-layers)",
    )
    p.add_argument(
        "--noise-temp",
        type=_number(float, 0),
        default=0.2,
        help="Gumbel temperature (gumbel_*) or Gaussian noise scale (sparsemax_noise)",
    )
    p.add_argument("--epochs", type=_number(int, 1), default=5, help="passes over the data")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        metavar="NAME",
        help=f"one of {', '.join(DATASETS)}",
    )
    p.add_argument("--batch-size", type=_number(int, 1), default=128, help="samples per step")
    p.add_argument(
        "--learning-rate",
        type=_number(float, 0, strict=True),
        default=0.01,
        help="Adam's step size",
    )
    p.add_argument(
        "--seed",
        type=_number(int, 0),
        default=0,
        help="connections, initial logits, batch order and noise",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where mnist and cifar10 files are (mnist is downloaded there)",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where network.json goes; default runs/<dataset>-<UTC time>",
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="layer kernel: auto = difflogic on CUDA where it imports, else ours "
        "(cpp on CPU where it compiles, else torch)",
    )
    p.add_argument(
        "--threads",
        type=_number(int, 1),
        default=None,
        help="CPU threads for torch and our kernel (default: torch's choice)",
    )
    p.add_argument(
        "--progress-s",
        type=_number(float, 0, strict=True),
        default=10.0,
        help="seconds between progress lines within an epoch",
    )
    return p


def validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks between flags; p.error exits 2 with the message on stderr."""
    if args.residual_layers is None:
        args.residual_layers = min(DEFAULT_RESIDUAL_LAYERS, args.network_layers)
    elif args.residual_layers > args.network_layers:
        p.error(
            f"--residual-layers ({args.residual_layers}) must not exceed "
            f"--network-layers ({args.network_layers})"
        )
    classes = CLASSES[args.dataset]
    if args.grouping != classes:
        p.error(
            f"--grouping ({args.grouping}) must equal the number of classes of "
            f"{args.dataset} ({classes})"
        )
    if args.gate_optimizer.startswith("gumbel_") and args.noise_temp == 0:
        p.error(f"--gate-optimizer {args.gate_optimizer} needs --noise-temp > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.output_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        args.output_dir = Path("runs") / f"{args.dataset}-{stamp}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(parser, args)
    from trainer.loop import ConfigError, run  # torch-heavy imports after argument checks

    try:
        run(args)
    except ConfigError as exc:
        parser.error(str(exc))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0

"""`python -m trainer.circuit`: compile, predict, bench and verify, without the queue.

    compile NETWORK.json -o DIR       network.c/.h, network.v, the library, circuit.json
    predict DIR_OR_NETWORK --inputs X.npy --out Y.npy [--scores S.npy] [--threads T]
    bench   DIR_OR_NETWORK [--samples N] [--threads T]
    verify  DIR_OR_NETWORK [--dataset D] [--data-dir DIR | --dataset-file F] [--verilog-samples N]

A network.json (or a run directory holding one) given where a DIR is expected is compiled
into a cache directory first ($GATEQUEUE_CIRCUIT_CACHE). Exit status: 0 success, 1 verify
found a disagreement (or the simulation failed), 2 could not run: a missing or invalid
file, no C compiler, missing data, bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainer.circuit import bundle
from trainer.circuit.build import simd_level
from trainer.circuit.errors import CircuitError, SimulationError
from trainer.circuit.measure import bench_inputs, images_per_s
from trainer.circuit.verify import verify
from trainer.data import DATASETS, DataError, load_dataset

EXIT_DISAGREE = 1
EXIT_ERROR = 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _count(text: str) -> int:
    value = _positive(text) if text != "0" else 0
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.circuit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile network.json into DIR")
    c.add_argument("network", help="network.json or the run directory holding it")
    c.add_argument("-o", "--out", required=True, type=Path, help="directory to write")
    c.add_argument(
        "--words",
        type=_positive,
        default=bundle.DEFAULT_WORDS,
        help="64-bit words per gate operation (a power of two)",
    )
    c.add_argument("--no-optimize", action="store_true", help="compile every trained gate")

    pr = sub.add_parser("predict", help="classes of the rows of an .npy file")
    pr.add_argument("circuit", help="compiled directory, or network.json")
    pr.add_argument("--inputs", required=True, type=Path, help="(n, in_dim) 0/1 .npy")
    pr.add_argument("--out", required=True, type=Path, help="(n,) int64 classes .npy")
    pr.add_argument("--scores", type=Path, help="also write (n, classes) scores here")
    pr.add_argument("--threads", type=_positive, default=1)

    b = sub.add_parser("bench", help="images per second on random inputs")
    b.add_argument("circuit", help="compiled directory, or network.json")
    b.add_argument("--samples", type=_positive, default=1 << 16, help="inputs per call")
    b.add_argument("--threads", type=_positive, default=1)

    v = sub.add_parser("verify", help="C vs numpy vs Verilog on the test set")
    v.add_argument("circuit", help="compiled directory, or network.json")
    v.add_argument("--dataset", choices=DATASETS, help="default: the network's own")
    v.add_argument("--data-dir", type=Path, default=Path("data"))
    v.add_argument(
        "--dataset-file",
        type=Path,
        help="a registered data set's encoded file (gatequeue data download D --encoded)",
    )
    v.add_argument(
        "--verilog-samples",
        type=_count,
        default=None,
        help="simulate only the first N test samples (default all; 0 none)",
    )
    v.add_argument("--threads", type=_positive, default=1)
    return p


def _compile(args: argparse.Namespace) -> int:
    compiled = bundle.compile_network(
        args.network, args.out, words=args.words, optimize=not args.no_optimize
    )
    m = compiled.manifest
    print(
        f"gates={m['gates']} gates_live={m['gates_live']} depth={m['depth']} "
        f"compile_s={m['compile_s']} words={m['words']} dir={compiled.directory}"
    )
    for name, size in m["files"].items():
        print(f"file {name} bytes={size}")
    for key in ("histogram", "histogram_live"):
        print(f"{key} " + json.dumps(m[key], separators=(",", ":")))
    return 0


def _predict(args: argparse.Namespace) -> int:
    compiled = bundle.open_circuit(args.circuit)
    try:
        x = np.load(args.inputs, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{args.inputs}: cannot read as .npy ({exc})") from exc
    if x.ndim != 2 or x.shape[1] != compiled.network.in_dim:
        raise ValueError(f"{args.inputs}: shape {x.shape}, expected (n, {compiled.network.in_dim})")
    if x.dtype != np.bool_ and not ((x == 0) | (x == 1)).all():
        raise ValueError(f"{args.inputs}: values must be 0 or 1")
    np.save(args.out, compiled.library.predict(x, args.threads).astype(np.int64))
    if args.scores:
        np.save(args.scores, compiled.library.scores(x, args.threads).astype(np.int64))
    print(f"samples={len(x)} out={args.out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    compiled = bundle.open_circuit(args.circuit)
    x = bench_inputs(compiled.network.in_dim, args.samples)
    speed = images_per_s(compiled.library, x, threads=args.threads)
    m = compiled.manifest
    print(
        f"images_per_s={speed:.0f} gates={m['gates']} gates_live={m['gates_live']} "
        f"depth={m['depth']} threads={args.threads} simd={simd_level()} words={m['words']}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    compiled = bundle.open_circuit(args.circuit)
    name = args.dataset or compiled.network.meta.get("dataset", {}).get("name")
    if args.dataset_file is not None:
        name = name or args.dataset_file.stem
    elif name not in DATASETS:
        raise ValueError(
            f"the network's data set {name!r} is not one of {', '.join(DATASETS)}; pass "
            "--dataset, or --dataset-file for a registered one"
        )
    data = load_dataset(name, args.data_dir, args.dataset_file)
    if data.in_dim != compiled.network.in_dim:
        raise ValueError(
            f"{name} has {data.in_dim} inputs, the network reads {compiled.network.in_dim}"
        )
    try:
        check = verify(
            compiled,
            data.x_test,
            data.y_test,
            verilog_samples=args.verilog_samples,
            threads=args.threads,
        )
    except SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DISAGREE
    print(" ".join(check.lines()) + f" dataset={name} verified={str(check.verified).lower()}")
    return 0 if check.verified else EXIT_DISAGREE


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "compile": _compile,
    "predict": _predict,
    "bench": _bench,
    "verify": _verify,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (OSError, ValueError, CircuitError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR

"""Reload a saved discrete network and measure its test accuracy, without torch.

    python -m trainer.evaluate RUN_DIR [--dataset NAME] [--data-dir DIR]
    python -m trainer.evaluate RUN_DIR --dataset-file FILE

A run on a registered data set reads its encoded file: the worker's cached copy, or
`gatequeue data download NAME@VERSION --encoded` (docs/datasets.md). Evaluation runs the
gates as Boolean truth tables in numpy, independently of the training code, so agreement
with the run's `test_acc_discrete` checks the export as well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.data import DATASETS, DataError, load_dataset
from trainer.export import DiscreteNetwork, load_network


def evaluate(
    network: DiscreteNetwork,
    dataset: str | None = None,
    data_dir: str | Path = "data",
    dataset_file: str | Path | None = None,
) -> tuple[float, int]:
    """(accuracy, samples) of `network` on the test split of its (or the given) data set;
    `dataset_file`: a registered data set's encoded file (trainer.data.encoded)."""
    name = dataset or network.meta.get("dataset", {}).get("name")
    if name is None and dataset_file is not None:
        name = Path(dataset_file).stem
    if name is None:
        raise ValueError("the network names no dataset; pass one")
    data = load_dataset(name, data_dir, dataset_file)
    if data.in_dim != network.in_dim:
        raise ValueError(f"{name} has {data.in_dim} inputs, the network reads {network.in_dim}")
    predictions = network.predict(data.x_test)
    return float((predictions == data.y_test).mean()), len(data.y_test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__)
    parser.add_argument("network", help="network.json or the run's output dir")
    parser.add_argument("--dataset", choices=DATASETS, help="default: the one it was trained on")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument(
        "--dataset-file",
        type=Path,
        help="a registered data set's encoded file (gatequeue data download D --encoded)",
    )
    args = parser.parse_args(argv)
    try:
        network = load_network(args.network)
        accuracy, samples = evaluate(network, args.dataset, args.data_dir, args.dataset_file)
    except (OSError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    gates = sum(len(layer.op) for layer in network.layers)
    print(
        f"test_acc_discrete={accuracy:.4f} samples={samples} gates={gates} "
        f"layers={len(network.layers)}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

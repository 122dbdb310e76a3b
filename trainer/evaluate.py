"""Reload a saved discrete network and measure its test accuracy, without torch.

    python -m trainer.evaluate RUN_DIR [--dataset NAME] [--data-dir DIR]

Evaluation runs the gates as Boolean truth tables in numpy, independently of the training
code, so agreement with the run's `test_acc_discrete` checks the export as well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.data import DATASETS, DataError, load_dataset
from trainer.export import DiscreteNetwork, load_network


def evaluate(
    network: DiscreteNetwork, dataset: str | None = None, data_dir: str | Path = "data"
) -> tuple[float, int]:
    """(accuracy, samples) of `network` on the test split of its (or the given) data set."""
    name = dataset or network.meta.get("dataset", {}).get("name")
    if name is None:
        raise ValueError("the network names no dataset; pass one")
    data = load_dataset(name, data_dir)
    if data.in_dim != network.in_dim:
        raise ValueError(f"{name} has {data.in_dim} inputs, the network reads {network.in_dim}")
    predictions = network.predict(data.x_test)
    return float((predictions == data.y_test).mean()), len(data.y_test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__)
    parser.add_argument("network", help="network.json or the run's output dir")
    parser.add_argument("--dataset", choices=DATASETS, help="default: the one it was trained on")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args(argv)
    try:
        network = load_network(args.network)
        accuracy, samples = evaluate(network, args.dataset, args.data_dir)
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

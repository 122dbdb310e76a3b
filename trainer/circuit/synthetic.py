"""Random network.json documents, for tests and benchmarks that need a circuit of a size.

A random network has the shape of a trained one (layers, GroupSum) but uniformly random
connections and gate ids, so it exercises every gate id and, unlike a trained network,
has almost nothing for the optimizer to remove: the worst case for speed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.export import FORMAT, VERSION


def random_network(
    in_dim: int,
    widths: list[int],
    grouping: int,
    *,
    seed: int = 0,
    ops: list[int] | None = None,
) -> dict[str, Any]:
    """A network.json document: len(widths) layers of random gates (ids drawn from `ops`)."""
    if not widths or widths[-1] % grouping:
        raise ValueError(f"the last width must be a multiple of grouping {grouping}")
    rng = np.random.default_rng(seed)
    choices = np.arange(16) if ops is None else np.asarray(ops)
    layers = []
    width = in_dim
    for gates in widths:
        layers.append(
            {
                "in_dim": width,
                "gates": gates,
                "a": rng.integers(0, width, gates).tolist(),
                "b": rng.integers(0, width, gates).tolist(),
                "op": rng.choice(choices, gates).tolist(),
            }
        )
        width = gates
    return {
        "format": FORMAT,
        "version": VERSION,
        "in_dim": in_dim,
        "grouping": grouping,
        "group_sum_tau": 1.0,
        "dataset": {"name": "random", "encoding": "random bits"},
        "layers": layers,
        "hyperparameters": {"seed": seed},
        "metrics": {},
    }

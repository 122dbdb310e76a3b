"""The saved discrete network (`network.json`) and evaluating it without torch.

Format (version 1), one JSON object:

    format         "gatequeue.logic-network"
    version        1
    in_dim         number of binary inputs
    grouping       classes k; group_sum_tau: GroupSum's divisor (argmax ignores it)
    dataset        {"name", "encoding"}: how raw data became the inputs
    layers         list, first to last, of {"in_dim", "gates", "a": [...], "b": [...],
                   "op": [...]}: gate j of a layer reads inputs a[j] and b[j] of the layer
                   before (the data for the first layer) and applies Boolean function op[j]
    hyperparameters, metrics: what the run was given and what it measured
    architecture   (conv networks only) their shape; the layers are the network unrolled
                   into gates (trainer.conv), so readers evaluate them as any other

Gate ids are difflogic's: gate g outputs bit (3 - (2a + b)) of g, so 1 = AND, 6 = XOR,
3 = pass A. Class c's score is the number of ones among the last layer's outputs
[c * n / k, (c + 1) * n / k); the prediction is the first class with the highest score.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "gatequeue.logic-network"
VERSION = 1
FILENAME = "network.json"


@dataclass(frozen=True)
class DiscreteLayer:
    a: np.ndarray
    b: np.ndarray
    op: np.ndarray


@dataclass(frozen=True)
class DiscreteNetwork:
    in_dim: int
    grouping: int
    layers: list[DiscreteLayer]
    meta: dict[str, Any]

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """(n, in_dim) bits -> (n, last width) bits, by truth-table lookup of each gate."""
        h = np.asarray(x).astype(bool)
        for layer in self.layers:
            a = h[:, layer.a].astype(np.uint8)
            b = h[:, layer.b].astype(np.uint8)
            shift = (3 - (2 * a + b)).astype(np.uint8)
            h = ((layer.op[None, :] >> shift) & 1).astype(bool)
        return h

    def scores(self, x: np.ndarray) -> np.ndarray:
        out = self.outputs(x)
        return out.reshape(len(out), self.grouping, -1).sum(-1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.scores(x).argmax(-1)


def network_document(
    model: Any,
    *,
    dataset: dict[str, str],
    hyperparameters: dict[str, Any],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The JSON document of a trained network's discrete form: a `trainer.model.LogicNet`'s
    layers, or a `trainer.conv.ConvLogicNet` unrolled into layers (its `architecture` is
    recorded beside them for information; no reader needs it)."""
    layers = model.discrete_layers()
    extra = {"architecture": model.architecture()} if hasattr(model, "architecture") else {}
    return {
        "format": FORMAT,
        "version": VERSION,
        "in_dim": model.in_dim,
        "grouping": model.group_sum.k,
        "group_sum_tau": model.group_sum.tau,
        "dataset": dataset,
        "layers": layers,
        "hyperparameters": hyperparameters,
        "metrics": metrics,
        **extra,
    }


def save_network(document: dict[str, Any], output_dir: Path) -> Path:
    """Write network.json atomically (a reader never sees half a file); returns its path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / FILENAME
    fd, tmp = tempfile.mkstemp(prefix=".network.", suffix=".json", dir=output_dir)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out, separators=(",", ":"))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_network(path: str | Path) -> DiscreteNetwork:
    """Read network.json (or a run dir holding one); raises ValueError if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{path} is not a {FORMAT} version {VERSION} file")
    layers = []
    width = doc["in_dim"]
    for i, layer in enumerate(doc["layers"]):
        a, b = np.asarray(layer["a"], np.int64), np.asarray(layer["b"], np.int64)
        op = np.asarray(layer["op"], np.uint8)
        if not (len(a) == len(b) == len(op) == layer["gates"]) or layer["in_dim"] != width:
            raise ValueError(f"{path}: layer {i} is inconsistent")
        if len(a) and (max(a.max(), b.max()) >= width or min(a.min(), b.min()) < 0):
            raise ValueError(f"{path}: layer {i} reads inputs outside 0..{width - 1}")
        if len(op) and op.max() > 15:
            raise ValueError(f"{path}: layer {i} has a gate id above 15")
        layers.append(DiscreteLayer(a, b, op))
        width = layer["gates"]
    if width % doc["grouping"]:
        raise ValueError(f"{path}: last width {width} is not a multiple of {doc['grouping']}")
    meta = {k: v for k, v in doc.items() if k not in ("layers",)}
    return DiscreteNetwork(doc["in_dim"], doc["grouping"], layers, meta)

"""Convolutional against dense logic networks at an equal gate count and equal epochs.

Two tasks: digits (8x8, 4 thermometer channels), and a translation task generated here:
one of `--classes` random 3x3 binary shapes at a random position of a 12x12 image, with
salt noise. A dense network has to learn a shape at every position separately; a conv
network's trees are shared by the positions. For each task both networks are trained with
the same optimiser, learning rate, batch size and epochs; the dense network gets as many
gates in its layers as the conv network has in total (trees unrolled over positions, OR
pools, dense layers: what the circuit starts from).

Reported per network: discrete test accuracy, gates, live gates (after the circuit
optimizer), training seconds per epoch and compiled images/s (single-threaded C library).

    python bench/conv_vs_dense.py                 # both tasks, 30 epochs
    python bench/conv_vs_dense.py --epochs 10 --tasks translation
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.runtime import prepare_process

prepare_process()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer import build_model  # noqa: E402
from trainer.circuit.api import build_run_circuit  # noqa: E402
from trainer.convspec import ConvSpec  # noqa: E402
from trainer.cpuinfo import cpu_model  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.data.catalog import ImageShape  # noqa: E402
from trainer.export import network_document, save_network  # noqa: E402


@dataclass(frozen=True)
class Task:
    name: str
    image: ImageShape
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


def translation_task(classes: int, train: int, test: int, seed: int = 0) -> Task:
    """3x3 shapes (each with 4..6 pixels set, all distinct) at random positions of 12x12."""
    rng = np.random.default_rng(seed)
    shapes: list[np.ndarray] = []
    while len(shapes) < classes:
        s = (rng.random((3, 3)) < 0.55).astype(np.uint8)
        if 4 <= s.sum() <= 6 and not any((s == t).all() for t in shapes):
            shapes.append(s)
    size = 12

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        x = (rng.random((n, size, size)) < 0.03).astype(np.uint8)  # salt noise
        for i, label in enumerate(y):
            r, c = rng.integers(0, size - 2, 2)
            x[i, r : r + 3, c : c + 3] |= shapes[label]
        return x.reshape(n, -1), y.astype(np.int64)

    x_tr, y_tr = draw(train)
    x_te, y_te = draw(test)
    return Task("translation", ImageShape(size, size, 1), x_tr, y_tr, x_te, y_te, classes)


def digits_task() -> Task:
    d = load_dataset("digits")
    assert d.image is not None
    return Task("digits", d.image, d.x_train, d.y_train, d.x_test, d.y_test, d.classes)


def train(
    model: torch.nn.Module, task: Task, epochs: int, lr: float, batch: int, seed: int
) -> float:
    """Seconds per epoch (mean)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.from_numpy(task.x_train).float()
    y = torch.from_numpy(task.y_train)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return (time.perf_counter() - t0) / epochs


def evaluate(model: Any, task: Task, seconds: float, out: Path) -> dict[str, Any]:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(task.x_test).float()).argmax(1).numpy()
    acc = float((pred == task.y_test).mean())
    doc = network_document(
        model, dataset={"name": task.name, "encoding": ""}, hyperparameters={}, metrics={}
    )
    path = save_network(doc, out)
    circuit = build_run_circuit(path, out, task.x_test, task.y_test, gates=sum(model.widths))
    assert circuit["verified"], circuit
    return {
        "acc": acc,
        "gates": circuit["gates"],
        "live": circuit["gatesLive"],
        "epoch_s": seconds,
        "images_per_s": circuit["imagesPerS"],
    }


# Conv blocks and OR pooling per task (--channels and --pool override): digits' 8x8 images
# are too small to pool twice, the translation task pools to gain its invariance.
TASK_CONV = {"digits": ("32", 1), "translation": ("16,32", 2)}


def run_task(task: Task, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    channels, pool = TASK_CONV[task.name]
    channels = args.channels or channels
    pool = args.pool or pool
    spec = ConvSpec(tuple(int(c) for c in channels.split(",")), pool=pool)
    print(f"# {task.name}: conv blocks {channels}, OR pooling {pool}x{pool}", flush=True)
    common = dict(
        grouping=task.classes, gate_optimizer=args.gate_optimizer, backend="auto",
        noise_temp=0.2,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    conv = build_model(
        task.image.inputs, gates=args.dense_gates, network_layers=2, group_sum_tau=args.tau,
        residual_layers=args.conv_residual, architecture="conv", image=task.image, conv=spec,
        **common,
    )  # fmt: skip
    total = sum(conv.widths)
    layers = 2
    torch.manual_seed(args.seed)
    dense = build_model(
        task.image.inputs, gates=total // layers, network_layers=layers, group_sum_tau=args.tau
        * (total // layers / args.dense_gates) ** 0.5, residual_layers=0, **common,
    )  # fmt: skip
    rows = []
    for name, model in (("conv", conv), ("dense", dense)):
        seconds = train(model, task, args.epochs, args.learning_rate, args.batch_size, args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            rows.append((name, evaluate(model, task, seconds, Path(tmp))))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", default="digits,translation")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--channels", default=None, help="conv blocks (default: per task)")
    p.add_argument("--pool", type=int, default=None, help="OR pooling (default: per task)")
    p.add_argument("--dense-gates", type=int, default=1000, help="the conv net's dense layers")
    p.add_argument("--gate-optimizer", default="softmax")
    p.add_argument("--learning-rate", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tau", type=float, default=3.0, help="the conv net's; dense: x sqrt(width)")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conv-residual", type=int, default=0, help="residual conv blocks")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {cpu_model()} ({platform.machine()}), torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.epochs} epochs, {args.gate_optimizer}")  # fmt: skip
    print(flush=True)
    print("| task | network | test acc (discrete) | gates | live gates | s/epoch | images/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    tasks = {
        "digits": digits_task,
        "translation": lambda: translation_task(args.classes, 3000, 1000),
    }
    for name in args.tasks.split(","):
        task = tasks[name]()
        rows = run_task(task, args)
        for net, r in rows:
            print(
                f"| {name} | {net} | {r['acc']:.4f} | {r['gates']} | {r['live']} | "
                f"{r['epoch_s']:.3f} | {r['images_per_s']:.3g} |",
                flush=True,
            )
        lead = rows[0][1]["acc"] - rows[1][1]["acc"]
        print(f"| {name} | conv - dense | {100 * lead:+.1f} pp | | | | |", flush=True)


if __name__ == "__main__":
    main()

"""Convolutional against dense logic networks at an equal gate count and equal epochs.

Two tasks: digits (8x8, 4 thermometer channels), and a translation task generated here:
one of `--classes` random 3x3 binary shapes at a random position of a 12x12 image, with
salt noise. A dense network has to learn a shape at every position separately; a conv
network's trees are shared by the positions. For each task both networks are trained with
the same optimiser, learning rate, batch size and epochs; the dense network gets as many
gates in its layers as the conv network has in total (trees unrolled over positions, OR
pools, dense layers: what the circuit starts from).

Each network is trained once per seed (`--seeds`, default 0,1,2: one split of 360 digits
test images has about 1 pp of noise, so one seed cannot tell 3 pp from luck). Reported per
network: discrete test accuracy as mean +- std over the seeds, gates, live gates (after the
circuit optimizer), training seconds per epoch and compiled images/s (single-threaded C
library; the circuit is built and verified for the first seed); then conv - dense (mean +-
std of the per-seed differences) and the ratio of the mean accuracies.

Learning rate and GroupSum tau are per task and per network (TASK_CONFIG), chosen on a
validation split, never on the test set: `--validate` holds out 20 % of the training set
and reports accuracy on it instead of the test set, and `--conv-lr`, `--conv-tau`,
`--dense-lr`, `--dense-tau` override the table, so both networks get the same tuning budget.

    python bench/conv_vs_dense.py                 # both tasks, 30 epochs, seeds 0,1,2
    python bench/conv_vs_dense.py --epochs 10 --tasks translation --seeds 0
    python bench/conv_vs_dense.py --tasks digits --validate --conv-tau 8.5
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, replace
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


def validation_split(task: Task, fraction: float = 0.2, seed: int = 123) -> Task:
    """The task with a held-out part of its training set as its test set (for tuning)."""
    order = np.random.default_rng(seed).permutation(len(task.y_train))
    held, kept = order[: int(fraction * len(order))], order[int(fraction * len(order)) :]
    return Task(
        task.name, task.image, task.x_train[kept], task.y_train[kept],
        task.x_train[held], task.y_train[held], task.classes,
    )  # fmt: skip


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


def accuracy(model: Any, task: Task) -> float:
    """Discrete (eval mode: argmax gates) accuracy on the task's test set."""
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(task.x_test).float()).argmax(1).numpy()
    return float((pred == task.y_test).mean())


def circuit_row(model: Any, task: Task, out: Path) -> dict[str, Any]:
    doc = network_document(
        model, dataset={"name": task.name, "encoding": ""}, hyperparameters={}, metrics={}
    )
    path = save_network(doc, out)
    circuit = build_run_circuit(path, out, task.x_test, task.y_test, gates=sum(model.widths))
    assert circuit["verified"], circuit
    return {
        "gates": circuit["gates"],
        "live": circuit["gatesLive"],
        "images_per_s": circuit["imagesPerS"],
    }


@dataclass(frozen=True)
class TaskConfig:
    """One task's networks. The conv network: `spec`, then `dense_gates` x 2 dense layers;
    the dense network: 2 layers sharing the conv network's total gate count."""

    spec: ConvSpec
    dense_gates: int
    conv_lr: float
    conv_tau: float
    dense_lr: float
    dense_tau: float  # for dense layers of 1000 gates; scaled by sqrt(width / 1000)


# Digits: chosen on the validation split (--validate; docs/trainer.md "Conv against
# dense"), the same grid of learning rate x tau (6 configurations x 3 seeds) for both
# networks; 256 trees over unpadded 3x3 windows, 2x2 OR pooling. Translation: untuned (the
# first configuration tried), it pools twice to gain its invariance.
TASK_CONFIG = {
    "digits": TaskConfig(
        ConvSpec((256,), kernel=3, padding=0, pool=2),
        2000,
        conv_lr=0.05,
        conv_tau=4.24,
        dense_lr=0.05,
        dense_tau=6.0,
    ),
    "translation": TaskConfig(
        ConvSpec((16, 32), pool=2), 1000, conv_lr=0.05, conv_tau=3.0, dense_lr=0.05,
        dense_tau=3.0,
    ),
}  # fmt: skip


def build_pair(task: Task, cfg: TaskConfig, args: argparse.Namespace, seed: int) -> list[Any]:
    common = dict(
        grouping=task.classes, gate_optimizer=args.gate_optimizer, backend="auto",
        noise_temp=0.2,
    )  # fmt: skip
    torch.manual_seed(seed)
    conv = build_model(
        task.image.inputs, gates=cfg.dense_gates, network_layers=2, group_sum_tau=cfg.conv_tau,
        residual_layers=args.conv_residual, architecture="conv", image=task.image,
        conv=cfg.spec, **common,
    )  # fmt: skip
    width = sum(conv.widths) // 2
    torch.manual_seed(seed)
    dense = build_model(
        task.image.inputs, gates=width, network_layers=2,
        group_sum_tau=cfg.dense_tau * (width / 1000) ** 0.5, residual_layers=0, **common,
    )  # fmt: skip
    return [conv, dense]


def task_config(name: str, args: argparse.Namespace) -> TaskConfig:
    cfg = TASK_CONFIG[name]
    spec = cfg.spec
    if args.channels:
        spec = replace(spec, channels=tuple(int(c) for c in args.channels.split(",")))
    if args.pool:
        spec = replace(spec, pool=args.pool)
    overrides = {
        k: getattr(args, k)
        for k in ("conv_lr", "conv_tau", "dense_lr", "dense_tau", "dense_gates")
        if getattr(args, k) is not None
    }
    return replace(cfg, spec=spec, **overrides)


def run_task(task: Task, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    cfg = task_config(task.name, args)
    s = cfg.spec
    print(
        f"# {task.name}: conv blocks {','.join(map(str, s.channels))}, kernel {s.kernel}, "
        f"padding {s.padding}, tree depth {s.depth}, OR pooling {s.pool}x{s.pool}, dense "
        f"{cfg.dense_gates} x 2; lr conv {cfg.conv_lr} dense {cfg.dense_lr}; tau conv "
        f"{cfg.conv_tau}, dense {cfg.dense_tau} x sqrt(width / 1000)"
        + ("; VALIDATION split" if args.validate else ""),
        flush=True,
    )
    rows: dict[str, dict[str, Any]] = {n: {"acc": [], "epoch_s": []} for n in ("conv", "dense")}
    for n, seed in enumerate(args.seeds):
        for name, model in zip(("conv", "dense"), build_pair(task, cfg, args, seed), strict=True):
            lr = cfg.conv_lr if name == "conv" else cfg.dense_lr
            rows[name]["epoch_s"].append(train(model, task, args.epochs, lr, args.batch_size, seed))
            rows[name]["acc"].append(accuracy(model, task))
            if n == 0 and not args.validate:
                with tempfile.TemporaryDirectory() as tmp:
                    rows[name] |= circuit_row(model, task, Path(tmp))
            elif n == 0:
                rows[name] |= {"gates": sum(model.widths), "live": "", "images_per_s": None}
    return rows


def mean_std(values: list[float]) -> str:
    a = np.asarray(values)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", default="digits,translation")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    p.add_argument("--channels", default=None, help="conv blocks (default: per task)")
    p.add_argument("--pool", type=int, default=None, help="OR pooling (default: per task)")
    p.add_argument("--dense-gates", type=int, default=None, help="the conv net's dense layers")
    p.add_argument("--conv-lr", type=float, default=None)
    p.add_argument("--conv-tau", type=float, default=None)
    p.add_argument("--dense-lr", type=float, default=None)
    p.add_argument("--dense-tau", type=float, default=None, help="x sqrt(width / 1000)")
    p.add_argument("--validate", action="store_true", help="report on 20 %% of train held out")
    p.add_argument("--gate-optimizer", default="softmax")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--conv-residual", type=int, default=0, help="residual conv blocks")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {cpu_model()} ({platform.machine()}), torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.epochs} epochs, {args.gate_optimizer}, "
          f"seeds {','.join(map(str, args.seeds))}")  # fmt: skip
    print(flush=True)
    split = "validation" if args.validate else "test"
    print(f"| task | network | {split} acc (discrete, mean ± std) | gates | live gates | "
          "s/epoch | images/s |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    tasks = {
        "digits": digits_task,
        "translation": lambda: translation_task(args.classes, 3000, 1000),
    }
    for name in args.tasks.split(","):
        task = tasks[name]()
        if args.validate:
            task = validation_split(task)
        rows = run_task(task, args)
        for net, r in rows.items():
            ips = f"{r['images_per_s']:.3g}" if r["images_per_s"] else ""
            print(
                f"| {name} | {net} | {mean_std(r['acc'])} | {r['gates']} | {r['live']} | "
                f"{np.mean(r['epoch_s']):.3f} | {ips} |",
                flush=True,
            )
        conv, dense = np.asarray(rows["conv"]["acc"]), np.asarray(rows["dense"]["acc"])
        diff = 100 * (conv - dense)
        std = diff.std(ddof=1) if len(diff) > 1 else 0.0
        print(
            f"| {name} | conv - dense | {diff.mean():+.1f} ± {std:.1f} pp "
            f"(ratio {conv.mean() / dense.mean():.3f}) | | | | |",
            flush=True,
        )


if __name__ == "__main__":
    main()

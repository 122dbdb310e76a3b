"""One training run: data, model, epochs with their EPOCH lines, the saved network.

stdout carries the contract of docs/design.md ("Trainer output"): exactly one line per epoch
starting `EPOCH i/N` followed by key=value pairs, then a `SUMMARY` line; everything else
is a structlog record. Each line is flushed as it is written, so the job log is live.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from trainer import logs, supervision
from trainer.data import Dataset, load_dataset
from trainer.export import network_document, save_network
from trainer.layer import PARALLEL_MIN_WORK
from trainer.model import LogicNet, build_model, relaxed_evaluation
from trainer.options import TRAINING_OPTIONS

EVAL_BATCH = 2048


class ConfigError(ValueError):
    """An argument combination found invalid only once the model or device is known."""


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0
    seconds: float = 0.0


def emit(line: str) -> None:
    print(line, flush=True)


def format_pairs(values: dict[str, float | int]) -> str:
    out = []
    for key, value in values.items():
        out.append(f"{key}={value}" if isinstance(value, int) else f"{key}={value:.4f}")
    return " ".join(out)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def accuracy(model: LogicNet, x: torch.Tensor, y: torch.Tensor) -> float:
    correct = 0
    for i in range(0, len(x), EVAL_BATCH):
        scores = model(x[i : i + EVAL_BATCH].float())
        correct += int((scores.argmax(-1) == y[i : i + EVAL_BATCH]).sum())
    return correct / max(1, len(x))


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The run's training options under their request names (trainer.options)."""
    return {o.name: getattr(args, o.dest) for o in TRAINING_OPTIONS}


def train_epoch(
    model: LogicNet,
    opt: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
    epoch: int,
    generator: torch.Generator,
) -> EpochStats:
    log = logs.get_logger()
    x, y = data
    model.train()
    # Sums stay on the device: reading them every step would stall a CUDA queue.
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    seen = 0
    order = torch.randperm(len(x), generator=generator).to(x.device)
    batches = math.ceil(len(x) / args.batch_size)
    last_report = start = time.perf_counter()
    for i in range(batches):
        idx = order[i * args.batch_size : (i + 1) * args.batch_size]
        xb, yb = x[idx].float(), y[idx]
        scores = model(xb)
        loss = torch.nn.functional.cross_entropy(scores, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(yb)
        correct += (scores.detach().argmax(-1) == yb).sum()
        seen += len(yb)
        now = time.perf_counter()
        if now - last_report >= args.progress_s and i + 1 < batches:
            last_report = now
            log.info(
                "progress",
                epoch=f"{epoch}/{args.epochs}",
                batch=f"{i + 1}/{batches}",
                loss=round(float(loss_sum) / seen, 4),
                samples_per_s=round(seen / (now - start), 1),
            )
    stats = EpochStats(float(loss_sum), int(correct), seen, batches)
    stats.seconds = time.perf_counter() - start  # after the reads above: the queue is done
    return stats


def run(
    args: argparse.Namespace, supervised: supervision.Supervision | None = None
) -> dict[str, float]:
    """Train as `args` say; returns the last epoch's metrics. Raises DataError, ConfigError.

    `supervised`: the worker's channel (trainer.supervision), when a worker runs us."""
    logs.configure()
    log = logs.get_logger()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)

    t0 = time.perf_counter()
    data: Dataset = load_dataset(args.dataset, args.data_dir)
    log.info(
        "data loaded",
        dataset=data.name,
        train=len(data.y_train),
        test=len(data.y_test),
        inputs=data.in_dim,
        classes=data.classes,
        encoding=data.encoding,
        seconds=round(time.perf_counter() - t0, 2),
    )
    try:
        model = build_model(
            data.in_dim,
            gates=args.gates,
            network_layers=args.network_layers,
            grouping=args.grouping,
            group_sum_tau=args.group_sum_tau,
            gate_optimizer=args.gate_optimizer,
            residual_layers=args.residual_layers,
            noise_temp=args.noise_temp,
            backend=args.backend,
        ).to(device)
        backend = model.backend_on(device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if (
        args.threads is None
        and device.type == "cpu"
        and max(model.widths) * args.batch_size < PARALLEL_MIN_WORK
    ):
        # Too little work per op to share: a second thread only adds wake-ups, and on a
        # busy machine every parallel op then waits for a preempted thread.
        torch.set_num_threads(1)
    if model.widths[-1] != args.gates:
        log.info(
            "last layer rounded up to a multiple of grouping",
            gates=args.gates,
            last_layer=model.widths[-1],
            grouping=args.grouping,
        )
    log.info(
        "model built",
        device=str(device),
        backend=backend,
        widths=model.widths,
        gates_total=sum(model.widths),
        gate_optimizer=args.gate_optimizer,
        residual_layers=args.residual_layers,
        threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "unset"),
        torch=torch.__version__,
    )

    x_tr = torch.from_numpy(data.x_train).to(device)
    y_tr = torch.from_numpy(data.y_train).to(device)
    x_te = torch.from_numpy(data.x_test).to(device)
    y_te = torch.from_numpy(data.y_test).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(args.seed)

    run_start = time.perf_counter()
    metrics: dict[str, float] = {}
    best = 0.0
    for epoch in range(1, args.epochs + 1):
        e0 = time.perf_counter()
        stats = train_epoch(model, opt, (x_tr, y_tr), args, epoch, generator)
        with relaxed_evaluation(model):
            test_acc = accuracy(model, x_te, y_te)
        model.eval()
        test_acc_discrete = accuracy(model, x_te, y_te)
        metrics = {
            "train_loss": stats.loss_sum / max(1, stats.seen),
            "train_acc": stats.correct / max(1, stats.seen),
            "test_acc": test_acc,
            "test_acc_discrete": test_acc_discrete,
            "epoch_s": time.perf_counter() - e0,
            "step_ms": 1e3 * stats.seconds / max(1, stats.steps),
        }
        best = max(best, test_acc_discrete)
        emit(f"EPOCH {epoch}/{args.epochs} {format_pairs(metrics)}")

    total_s = time.perf_counter() - run_start
    document = network_document(
        model,
        dataset={"name": data.name, "encoding": data.encoding},
        hyperparameters=hyperparameters(args),
        metrics={**metrics, "best_test_acc_discrete": best, "total_s": total_s},
    )
    path = save_network(document, args.output_dir)
    log.info("network saved", path=str(path))
    emit(
        f"SUMMARY epochs={args.epochs} "
        + format_pairs(
            {
                "test_acc": metrics["test_acc"],
                "test_acc_discrete": metrics["test_acc_discrete"],
                "best_test_acc_discrete": best,
                "total_s": total_s,
            }
        )
        + f" gates={sum(model.widths)} network={path}"
    )
    return metrics

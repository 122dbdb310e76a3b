"""One training run: data, model, epochs with their EPOCH lines, the saved network, and
its checkpoints.

stdout carries the records of trainer/protocol.py: one `EPOCH` line per epoch, `CHECKPOINT`
after each checkpoint written, `RESUMED` when a run continues from one (docs/trainer.md,
"Checkpoints and resume"), `CIRCUIT` once the network is compiled and a last `SUMMARY`;
everything else is a structlog record. Each line is flushed as it is written, so the job
log is live.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from trainer import checkpoint, environment, logs, protocol, run_state, supervision
from trainer.conv import conv_arguments
from trainer.data import Dataset, load_dataset
from trainer.data.split import split_for_validation
from trainer.device import gpu_model, gpu_peak_mib, make_optimizer
from trainer.errors import CheckpointedStop, Diverged, RunConfigError
from trainer.export import network_document, save_network
from trainer.layer import PARALLEL_MIN_WORK
from trainer.memory import EVAL_BATCH
from trainer.model import LogicNet, build_model, relaxed_evaluation
from trainer.options import TRAINING_OPTIONS
from trainer.run_state import Kept, Progress

__all__ = ["EVAL_BATCH", "Diverged", "RunConfigError", "run"]


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0
    seconds: float = 0.0


def emit(record: protocol.Record) -> None:
    print(record.format(), flush=True)


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


class Checkpointer:
    """Writes the run's checkpoints: every `--checkpoint-interval-s` at epoch ends, and once
    on a stop request (then raises CheckpointedStop). Without `--checkpoint-dir` it writes
    nothing, and a stop request stops the run all the same."""

    def __init__(
        self,
        args: argparse.Namespace,
        model: LogicNet,
        opt: torch.optim.Optimizer,
        generator: torch.Generator,
        device: torch.device,
        backend: str,
        steps_per_epoch: int,
        earlier_s: float,
    ) -> None:
        self.directory: Path | None = args.checkpoint_dir
        self.interval_s: float = args.checkpoint_interval_s
        self.args, self.model, self.opt, self.generator = args, model, opt, generator
        self.device, self.backend, self.steps_per_epoch = device, backend, steps_per_epoch
        self.earlier_s = earlier_s
        self.started = time.perf_counter()
        self.last = time.monotonic()
        self.written: tuple[tuple[int, int, bool], Path] | None = None
        if self.directory is not None:
            self.directory = self.directory.absolute()
            for stale in checkpoint.remove_stale_temporaries(self.directory):
                logs.get_logger().info("removed an unfinished checkpoint", path=str(stale))

    def train_s(self) -> float:
        """Training time of this run so far, earlier processes included."""
        return self.earlier_s + time.perf_counter() - self.started

    def write(self, progress: Progress) -> Path:
        assert self.directory is not None
        t0 = time.perf_counter()
        header = checkpoint.header_fields(
            epoch=progress.epochs_done,
            step=progress.step,
            hyperparameters=hyperparameters(self.args),
            device=str(self.device),
            backend=self.backend,
            threads=torch.get_num_threads(),
            steps_per_epoch=self.steps_per_epoch,
        )
        progress.train_s = self.train_s()
        payload = run_state.capture(self.model, self.opt, self.generator, progress, self.device)
        path, size = checkpoint.write_checkpoint(self.directory, header, payload)
        emit(protocol.Checkpoint(progress.epochs_done, progress.step, path, size))
        logs.get_logger().info(
            "checkpoint written", seconds=round(time.perf_counter() - t0, 3), bytes=size
        )
        self.last = time.monotonic()
        self.written = (_state_key(progress), path)
        return path

    def at_epoch_end(self, progress: Progress) -> None:
        if self.directory is None:
            return
        if self.interval_s > 0 and time.monotonic() - self.last < self.interval_s:
            return
        try:
            self.write(progress)
        except (OSError, RuntimeError) as exc:
            # A run of days must not die of one failed write; the next interval tries again.
            logs.get_logger().error("checkpoint failed, training goes on", error=str(exc))

    def stop(self, progress: Progress, source: str | None) -> NoReturn:
        """Checkpoint (unless this process just wrote this very state) and stop."""
        if self.directory is None:
            print(
                f"gatequeue: checkpoint-and-stop ({source}) without --checkpoint-dir: "
                "stopping without a checkpoint",
                file=sys.stderr,
                flush=True,
            )
            raise CheckpointedStop(None)
        if self.written is not None and self.written[0] == _state_key(progress):
            raise CheckpointedStop(self.written[1])  # its CHECKPOINT line is out already
        try:
            path = self.write(progress)
        except (OSError, RuntimeError) as exc:
            print(f"gatequeue: checkpoint-and-stop: writing failed: {exc}", file=sys.stderr)
            raise CheckpointedStop(None) from exc
        raise CheckpointedStop(path)


def _state_key(progress: Progress) -> tuple[int, int, bool]:
    return progress.epochs_done, progress.step, progress.mid_epoch


def train_epoch(
    model: LogicNet,
    opt: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
    epoch: int,
    generator: torch.Generator,
    start: Progress | None = None,
    stop: Callable[[Progress], None] | None = None,
) -> EpochStats:
    """One pass over the training data in the order `generator` draws, or, when `start` is
    mid-epoch, the rest of the pass it describes. Between steps `stop(progress)` may end the
    run (it raises); it is not asked after the last step, the epoch then ends normally."""
    log = logs.get_logger()
    x, y = data
    model.train()
    batches = math.ceil(len(x) / args.batch_size)
    first = 0
    if start is not None and start.mid_epoch:
        assert start.order is not None and start.loss_sum is not None
        assert start.correct is not None
        order, first, seen = start.order.to(x.device), start.step, start.seen
        loss_sum, correct = start.loss_sum.to(x.device), start.correct.to(x.device)
    else:
        # Sums stay on the device: reading them every step would stall a CUDA queue.
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.int64)
        seen = 0
        order = torch.randperm(len(x), generator=generator).to(x.device)
    last_report = begin = time.perf_counter()
    for i in range(first, batches):
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
        if stop is not None and i + 1 < batches:
            stop(
                Progress(
                    epochs_done=epoch - 1,
                    step=i + 1,
                    order=order,
                    loss_sum=loss_sum,
                    correct=correct,
                    seen=seen,
                    kept=start.kept if start is not None else Kept(),
                    metrics=start.metrics if start is not None else {},
                )
            )
        now = time.perf_counter()
        if now - last_report >= args.progress_s and i + 1 < batches:
            last_report = now
            log.info(
                "progress",
                epoch=f"{epoch}/{args.epochs}",
                batch=f"{i + 1}/{batches}",
                loss=round(float(loss_sum) / seen, 4),
                samples_per_s=round((seen - (start.seen if start else 0)) / (now - begin), 1),
            )
    stats = EpochStats(float(loss_sum), int(correct), seen, batches - first)
    stats.seconds = time.perf_counter() - begin  # after the reads above: the queue is done
    return stats


def _resume_header(args: argparse.Namespace) -> checkpoint.Header | None:
    """Validate `--resume-from` before any work (raises BadCheckpoint)."""
    if args.resume_from is None:
        return None
    header = checkpoint.inspect(args.resume_from)
    checkpoint.check_hyperparameters(header, hyperparameters(args))
    return header


def _set_threads(
    args: argparse.Namespace, header: checkpoint.Header | None, device: torch.device
) -> None:
    """The thread count: --threads, else the resumed checkpoint's, else torch's default
    (one thread for small networks, decided once the model is built).

    Float sums split across threads add up in another order than on one: the C++ kernel's
    per-thread partial sums (and torch's parallel reductions) give bit-different results
    for another thread count. A run resumed on the CPU from a CPU checkpoint therefore
    computes with the threads that checkpoint was written with, whatever this machine's
    default is, so that it repeats the uninterrupted run exactly. On CUDA the GPU does the
    sums and the CPU threads do not matter."""
    log = logs.get_logger()
    saved = header.fields.get("threads") if header is not None else None
    same_kind = header is not None and device.type == "cpu" == header.fields.get("device")
    if args.threads:
        torch.set_num_threads(args.threads)
        if same_kind and isinstance(saved, int) and saved != args.threads:
            log.warning(
                "resuming with other threads than the checkpoint's: results will not repeat "
                "the uninterrupted run bit for bit",
                threads=args.threads,
                checkpoint_threads=saved,
            )
    elif same_kind and isinstance(saved, int) and saved > 0:
        torch.set_num_threads(saved)
        if saved > (os.cpu_count() or 1):
            log.warning(
                "resuming with the checkpoint's threads, more than this machine's CPUs "
                "(--threads N trades exact repetition for speed)",
                threads=saved,
                cpus=os.cpu_count(),
            )


def run(
    args: argparse.Namespace,
    supervised: supervision.Supervision | None = None,
    stop: supervision.StopRequest | None = None,
) -> dict[str, float]:
    """Train as `args` say; returns the last epoch's metrics. Raises DataError, RunConfigError,
    Diverged, BadCheckpoint (before any work: `--resume-from` names an unusable file) and
    CheckpointedStop (after a checkpoint-and-stop request).

    `supervised`: the worker's channel (trainer.supervision), when a worker runs us; `stop`:
    where checkpoint-and-stop requests arrive (default: from `supervised` only)."""
    logs.configure()
    log = logs.get_logger()
    stop = stop if stop is not None else supervision.StopRequest(supervised)
    header = _resume_header(args)
    device = pick_device(args.device)
    _set_threads(args, header, device)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    data: Dataset = load_dataset(args.dataset, args.data_dir, getattr(args, "dataset_file", None))
    if data.classes != args.grouping:
        raise RunConfigError(
            f"--grouping ({args.grouping}) must equal the number of classes of {data.name} "
            f"({data.classes})"
        )
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
            gate_estimator=args.gate_estimator,
            residual_pass_prob=args.residual_pass_prob,
            backend=args.backend,
            **conv_arguments(args, data),
        ).to(device)
        backend = model.backend_on(device)
    except ValueError as exc:
        raise RunConfigError(str(exc)) from exc
    if (
        args.threads is None
        and header is None
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
        omp_wait_policy=environment.omp_wait_policy(),
        torch=torch.__version__,
    )

    x_tr_np, y_tr_np, x_va_np, y_va_np = split_for_validation(data, args.valid_fraction, args.seed)
    x_tr = torch.from_numpy(x_tr_np).to(device)
    y_tr = torch.from_numpy(y_tr_np).to(device)
    x_va = torch.from_numpy(x_va_np).to(device)
    y_va = torch.from_numpy(y_va_np).to(device)
    if len(y_va_np):
        log.info(
            "validation split",
            train=len(y_tr_np),
            validation=len(y_va_np),
            source="the data set's own" if data.x_valid is not None else "validFraction",
        )
    x_te = torch.from_numpy(data.x_test).to(device)
    y_te = torch.from_numpy(data.y_test).to(device)
    opt = make_optimizer(model.parameters(), args.learning_rate, device)
    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(x_tr) / args.batch_size)

    progress = Progress()
    if header is not None:
        payload = checkpoint.load_payload(header)
        progress = run_state.restore(header.path, payload, model, opt, generator, device)
        del payload
        if progress.order is not None and (
            len(progress.order) != len(x_tr) or progress.step >= steps_per_epoch
        ):
            raise checkpoint.BadCheckpoint(
                header.path,
                f"written for another data set ({len(progress.order)} training samples, "
                f"step {progress.step}; here {len(x_tr)} samples, {steps_per_epoch} steps)",
            )
        if header.fields.get("device") != str(device):
            log.warning(
                "resuming on another device: the random noise differs from the original run",
                checkpoint_device=header.fields.get("device"),
                device=str(device),
            )
        other = checkpoint.other_gpu(header, gpu_model(device))
        if other is not None:
            log.warning(
                "resuming on another GPU model: its kernels add in another order, so the run "
                "will not repeat the original bit for bit",
                checkpoint_gpu=other,
                gpu=gpu_model(device),
            )
        emit(protocol.Resumed(progress.epochs_done, progress.step))

    saver = Checkpointer(
        args, model, opt, generator, device, backend, steps_per_epoch, progress.train_s
    )

    def maybe_stop(state: Progress) -> None:
        if stop.requested():
            saver.stop(state, stop.source)
        while stop.ignored:
            log.warning("ignored an unknown request from the worker", request=stop.ignored.pop())

    metrics: dict[str, float] = dict(progress.metrics)
    kept = progress.kept
    stop_epoch = getattr(args, "stop_epoch", None)
    if stop_epoch is not None and stop_epoch <= progress.epochs_done < args.epochs:
        saver.stop(progress, "stop-epoch")  # resumed at (or past) its rung already
    for epoch in range(progress.epochs_done + 1, args.epochs + 1):
        maybe_stop(progress)
        e0 = time.perf_counter()
        stats = train_epoch(model, opt, (x_tr, y_tr), args, epoch, generator, progress, maybe_stop)
        if not math.isfinite(stats.loss_sum):
            raise Diverged(epoch, stats.loss_sum)
        metrics = {
            "train_loss": stats.loss_sum / max(1, stats.seen),
            "train_acc": stats.correct / max(1, stats.seen),
        }
        with relaxed_evaluation(model):
            if len(y_va):
                metrics["val_acc"] = accuracy(model, x_va, y_va)
            test_acc = accuracy(model, x_te, y_te)
        model.eval()
        if len(y_va):
            metrics["val_acc_discrete"] = accuracy(model, x_va, y_va)
        metrics |= {
            "test_acc": test_acc,
            "test_acc_discrete": accuracy(model, x_te, y_te),
            "epoch_s": time.perf_counter() - e0,
            "step_ms": 1e3 * stats.seconds / max(1, stats.steps),
        }
        peak = gpu_peak_mib(device)
        if peak is not None:  # what the memory estimate is checked against (docs/worker.md)
            metrics["gpu_peak_mib"] = peak
        # Selection reads the validation split only; the first of equal epochs stays.
        if "val_acc_discrete" in metrics and metrics["val_acc_discrete"] > kept.value:
            state = run_state.model_state_copy(model)
            kept = Kept(epoch, metrics["val_acc_discrete"], metrics, state)
        emit(protocol.Epoch(epoch, args.epochs, metrics))
        progress = Progress(epochs_done=epoch, kept=kept, metrics=metrics)
        saver.at_epoch_end(progress)
        if stop_epoch is not None and stop_epoch <= epoch < args.epochs:
            saver.stop(progress, "stop-epoch")  # a sweep's rung: its scheduler decides

    total_s = saver.train_s()
    kept_epoch, kept_metrics = args.epochs, metrics
    if args.keep == "best" and kept.state is not None:
        run_state.load_model_state(model, kept.state)
        kept_epoch, kept_metrics = kept.epoch, kept.metrics
        log.info("kept the best epoch's network", epoch=kept.epoch, val_acc_discrete=kept.value)
    document = network_document(
        model,
        dataset={"name": data.name, "encoding": data.encoding},
        hyperparameters=hyperparameters(args),
        metrics={**kept_metrics, "kept_epoch": kept_epoch, "total_s": total_s},
    )
    path = save_network(document, args.output_dir)
    log.info("network saved", path=str(path))
    circuit = (
        None if getattr(args, "no_circuit", False) else run_circuit(path, data, sum(model.widths))
    )
    result = protocol.Result(
        epoch=kept_epoch,
        test_acc_discrete=kept_metrics["test_acc_discrete"],
        test_acc=kept_metrics["test_acc"],
        discretization_gap=kept_metrics["test_acc"] - kept_metrics["test_acc_discrete"],
        val_acc_discrete=kept_metrics.get("val_acc_discrete"),
    )
    summary: dict[str, float | int] = {}
    if circuit is not None:
        summary["live_fraction"] = circuit["gatesLive"] / max(1, circuit["gates"])
    peak = gpu_peak_mib(device)
    if peak is not None:
        summary["gpu_peak_mib"] = peak
    summary["total_s"] = total_s
    emit(protocol.Summary(args.epochs, summary, sum(model.widths), path, result))
    return metrics


def run_circuit(network_path: Path, data: Dataset, gates: int) -> dict[str, Any] | None:
    """Compile, verify and time the saved network's circuit (docs/trainer.md, "The
    circuit"): network.c, .h and .v beside network.json and the CIRCUIT line; or, where it
    cannot be built, one line on stderr saying why and None. The run succeeds either way:
    its network is saved already, the circuit is an addition to it."""
    from trainer.circuit.api import build_run_circuit

    log = logs.get_logger()
    t0 = time.perf_counter()
    try:
        result = build_run_circuit(
            network_path, network_path.parent, data.x_test, data.y_test, gates=gates
        )
        line = protocol.Circuit(result).format()  # ValueError for a malformed result
    except Exception as exc:  # any failure of the addition spares the run
        reason = str(exc).strip() or type(exc).__name__
        first, _, rest = reason.partition("\n")
        if type(exc).__name__ not in ("CircuitError", "SimulationError"):
            first = f"{type(exc).__name__}: {first}"
        print(f"gatequeue: circuit not built: {first}", file=sys.stderr, flush=True)
        if rest:
            print(rest, file=sys.stderr, flush=True)
        return None
    print(line, flush=True)
    log.info(
        "circuit built",
        seconds=round(time.perf_counter() - t0, 2),
        verified=result["verified"],
        disagreements=result["disagreements"],
        gates_live=result["gatesLive"],
        images_per_s=result["imagesPerS"],
    )
    if not result["verified"]:
        log.error(
            "the compiled circuit disagrees with the saved network",
            disagreements=result["disagreements"],
        )
    return result

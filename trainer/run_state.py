"""What a run is at a checkpoint, and taking it out of and back into a live run: the
model's parameters and buffers, Adam's state, how far training got (`Progress`), the best
network so far (`Kept`) and every random generator. trainer/checkpoint.py is the file that
carries it (torch-free); this module needs torch (docs/trainer.md, "Checkpoints and
resume").
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainer.errors import BadCheckpoint

if TYPE_CHECKING:
    import torch


@dataclass
class Kept:
    """The best network so far by `val_acc_discrete` (docs/trainer.md, "Validation and the
    kept network"): its epoch (0: none yet), that value, its EPOCH metrics and a CPU copy
    of its parameters and buffers. A checkpoint carries it, so a resumed run keeps the same
    network as an uninterrupted one."""

    epoch: int = 0
    value: float = -1.0
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None


@dataclass
class Progress:
    """How far a run got. `epochs_done` = K; mid-epoch (`order` set) the run stopped after
    `step` steps of epoch K + 1, whose data order and partial sums are kept. `kept` and
    `metrics` (the last EPOCH line's) feed the SUMMARY and network.json; `train_s` is the
    training time up to the checkpoint, earlier processes included, so that total_s counts
    every attempt."""

    epochs_done: int = 0
    step: int = 0
    order: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    seen: int = 0
    kept: Kept = field(default_factory=Kept)
    metrics: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0

    @property
    def mid_epoch(self) -> bool:
        return self.order is not None


def capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    progress: Progress,
    device: torch.device,
) -> dict[str, Any]:
    """The payload of a checkpoint: tensors and plain values only (weights_only loads it).

    Reads the CUDA generator of `device` only when the run uses CUDA: touching it otherwise
    would create a CUDA context for nothing."""
    import numpy as np
    import torch

    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": {
                "kind": str(kind),
                "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "torch": torch.get_rng_state(),
            "cuda": cuda,
            "data_order": generator.get_state(),
        },
        "progress": {
            "epochs_done": progress.epochs_done,
            "step": progress.step,
            "order": None if progress.order is None else progress.order.cpu(),
            "loss_sum": None if progress.loss_sum is None else progress.loss_sum.cpu(),
            "correct": None if progress.correct is None else progress.correct.cpu(),
            "seen": progress.seen,
            "kept": {
                "epoch": progress.kept.epoch,
                "value": progress.kept.value,
                "metrics": dict(progress.kept.metrics),
                # The network at an epoch's end is the kept one when that epoch is: saved once.
                "state": None
                if progress.kept.epoch == progress.epochs_done and not progress.mid_epoch
                else progress.kept.state,
            },
            "metrics": dict(progress.metrics),
            "train_s": progress.train_s,
        },
    }


def restore(
    path: str | os.PathLike[str],
    payload: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> Progress:
    """Put `payload` back into the model, the optimizer and every generator; the progress.

    Call it last before training: building the model draws from torch's generator, which
    is then overwritten here. Raises BadCheckpoint if the payload does not fit."""
    import numpy as np
    import torch

    try:
        load_model_state(model, payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        rng = payload["rng"]
        state = rng["numpy"]
        np.random.set_state(
            (
                state["kind"],
                state["key"].numpy().astype(np.uint32),
                state["pos"],
                state["has_gauss"],
                state["gauss"],
            )
        )
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        generator.set_state(rng["data_order"])
        p = payload["progress"]
        kept = _restore_kept(p.get("kept"), int(p["epochs_done"]), model)
        return Progress(
            epochs_done=int(p["epochs_done"]),
            step=int(p["step"]),
            order=None if p["order"] is None else p["order"].to(device),
            loss_sum=None if p["loss_sum"] is None else p["loss_sum"].to(device),
            correct=None if p["correct"] is None else p["correct"].to(device),
            seen=int(p["seen"]),
            kept=kept,
            metrics={str(k): float(v) for k, v in p["metrics"].items()},
            train_s=float(p["train_s"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadCheckpoint(path, f"corrupt (its state lacks or mangles {exc})") from exc
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadCheckpoint(path, f"does not fit this network ({first})") from exc


def model_state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's parameters and buffers that later steps do not change."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def load_model_state(model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Load parameters and buffers, then the derived ones that are not saved."""
    import torch

    model.load_state_dict(state)
    # LogicLayer's int32 copies of the connections are derived, non-persistent buffers:
    # bring them in line with the loaded connections.
    for layer in getattr(model, "layers", ()):
        if hasattr(layer, "idx_a32"):
            layer.idx_a32.copy_(layer.idx_a.to(torch.int32))
            layer.idx_b32.copy_(layer.idx_b.to(torch.int32))
            layer._reverse = None


def _restore_kept(saved: Any, epochs_done: int, model: torch.nn.Module) -> Kept:
    """The kept network of a payload; a checkpoint from before `kept` existed keeps none
    yet (the next epoch becomes the kept one)."""
    if saved is None:
        return Kept()
    state = saved["state"]
    epoch = int(saved["epoch"])
    if state is None and epoch > 0:
        if epoch != epochs_done:
            raise KeyError("kept.state")
        state = model_state_copy(model)  # the loaded network is the kept one
    return Kept(
        epoch=epoch,
        value=float(saved["value"]),
        metrics={str(k): float(v) for k, v in saved["metrics"].items()},
        state=state,
    )

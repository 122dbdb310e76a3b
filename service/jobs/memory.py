"""Memory admission: a job's estimated peak (trainer.memory) against what slots can hold.

The API estimates every job when it is submitted (stored as `memoryEstimate`), refuses one
that no live worker's slot could ever hold (a 422 naming the options that make it big), and
a worker claims a job only for a slot it fits (docs/worker.md, "Memory"). A slot whose
capacity is unknown fits everything: admission never refuses on a guess.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from service.jobs.record import MemoryEstimate
from trainer.data.catalog import DataShape
from trainer.memory import SIZE_OPTIONS, estimate_memory, size_key

# What each of the estimate's items grows with: the batch, or the network's size.
BATCH_ITEMS = frozenset({"activations", "backward_buffers", "batch_inputs", "data_order"})
MODEL_ITEMS = frozenset(
    {"parameters", "gradients", "adam_state", "connections", "gate_probabilities"}
)


def estimate(
    hyperparameters: Mapping[str, Any], shape: DataShape | None = None
) -> MemoryEstimate:
    """The job's peaks on both devices (`shape`: a registered data set's). Every submission
    needs one, and a counted estimate costs about 0.2 ms: shared between jobs of the same
    size (trainer.memory.size_key)."""
    return _estimate(size_key(hyperparameters), shape).model_copy()


@functools.lru_cache(maxsize=4096)
def _estimate(key: tuple[Any, ...], shape: DataShape | None) -> MemoryEstimate:
    hyperparameters = dict(zip(SIZE_OPTIONS, key, strict=True))
    return MemoryEstimate(
        cpu=estimate_memory(hyperparameters, "cpu", shape=shape).total_bytes,
        cuda=estimate_memory(hyperparameters, "cuda", shape=shape).total_bytes,
    )


def needed(est: MemoryEstimate | None, device: str) -> int:
    if est is None:
        return 0
    return est.cpu if device == "cpu" else est.cuda


def fits(est: MemoryEstimate | None, device: str, capacity: int | None) -> bool:
    return capacity is None or needed(est, device) <= capacity


def human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.0f} KiB"


class TooBig(Exception):
    """No live slot could ever hold the job; `fields` say which options make it big."""

    def __init__(self, message: str, fields: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.fields = fields


def admit(
    hyperparameters: Mapping[str, Any],
    slots: Iterable[tuple[str, int | None]],
    shape: DataShape | None = None,
) -> MemoryEstimate:
    """The job's estimate, once check_fits has let it in (TooBig otherwise): what a
    submission, alone or in a sweep, stores with the job."""
    est = estimate(hyperparameters, shape)
    check_fits(hyperparameters, est, slots, shape)
    return est


def check_fits(
    hyperparameters: Mapping[str, Any],
    est: MemoryEstimate,
    slots: Iterable[tuple[str, int | None]],
    shape: DataShape | None = None,
) -> None:
    """Raise TooBig unless some slot (device, capacity) could hold the job. No slots at all
    (no worker has ever started) refuses nothing: the job waits for one."""
    slots = list(slots)
    if not slots or any(fits(est, device, cap) for device, cap in slots):
        return
    # The slot closest to fitting says what to change.
    device, capacity = min(slots, key=lambda s: needed(est, s[0]) / max(1, s[1] or 1))
    assert capacity is not None
    detail = estimate_memory(hyperparameters, device, shape=shape)
    batch = sum(n for k, n in detail.breakdown.items() if k in BATCH_ITEMS)
    model = sum(n for k, n in detail.breakdown.items() if k in MODEL_ITEMS)
    total = detail.total_bytes
    message = (
        f"this job needs an estimated {human(total)} on {device} (peak in the "
        f"{detail.phase}), and the largest worker slot holds {human(capacity)}: no worker "
        "could ever run it; lower batchSize, gates or networkLayers"
    )
    batch_field = {
        "field": "batchSize",
        "message": f"the activations of batchSize x gates x networkLayers take "
        f"{human(batch)} of the {human(total)} estimated ({human(capacity)} fit a slot)",
        "type": "memory",
    }
    model_fields = [
        {
            "field": name,
            "message": f"the parameters, optimizer state and connections of gates x "
            f"networkLayers take {human(model)} of the {human(total)} estimated "
            f"({human(capacity)} fit a slot)",
            "type": "memory",
        }
        for name in ("gates", "networkLayers")
    ]
    fields = [batch_field, *model_fields] if batch >= model else [*model_fields, batch_field]
    if hyperparameters.get("architecture") == "conv":
        # A conv network's activations are its blocks' at every position (trainer.memory).
        message = message.replace("or networkLayers", "networkLayers or convChannels")
        fields.insert(
            1 if batch >= model else len(fields),
            {
                "field": "convChannels",
                "message": f"the conv blocks' patches and tree outputs at every position "
                f"grow with convChannels x batchSize: of the {human(batch)} of activations "
                f"({human(capacity)} fit a slot)",
                "type": "memory",
            },
        )
    raise TooBig(message, fields)


# The cap on a CPU trainer's data segment (RLIMIT_DATA): this much above its estimate. The
# data segment runs ~150-200 MiB above the resident set (measured: 1,469 MiB against 1,276
# MiB RSS for 32,000 x 3 gates, batch 512) and the estimate is within 30 % of the peak RSS,
# so a run that needs what it was estimated to need never meets the cap.
LIMIT_FACTOR = 1.25
LIMIT_HEADROOM = 512 << 20


def cpu_limit(
    est: MemoryEstimate | None, factor: float = LIMIT_FACTOR, headroom: int = LIMIT_HEADROOM
) -> int | None:
    """The data-segment cap of a CPU trainer with this estimate (None: no estimate)."""
    if est is None:
        return None
    return int(est.cpu * factor) + headroom

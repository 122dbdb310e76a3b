"""The trainer's per-epoch line (docs/design.md, "Trainer output") turned into a metrics record.

The format is a contract with any trainer, not just ours, so parsing is lenient: any
`key=number` pair is kept, anything else on the line is ignored rather than failing the run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_HEAD = re.compile(r"^EPOCH (\d+)/(\d+)(?:\s+(.*))?$")
# Keys become MongoDB field names in `job_metrics` and `latestMetrics`: no `$`, no dots.
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# These are the metrics document's own fields; a trainer printing them must not clobber them.
RESERVED_KEYS = frozenset({"_id", "jobId", "epoch", "epochs", "ts"})


@dataclass(frozen=True)
class EpochLine:
    epoch: int
    epochs: int
    metrics: dict[str, float | int]

    def as_latest(self) -> dict[str, float | int]:
        """The job's `latestMetrics`: the line as a flat object, epoch counters included."""
        return {"epoch": self.epoch, "epochs": self.epochs, **self.metrics}


def parse_epoch_line(line: str) -> EpochLine | None:
    """`EPOCH 3/5 train_loss=0.41 ...` -> EpochLine; `None` for every other line."""
    match = _HEAD.match(line.rstrip())
    if match is None:
        return None
    metrics: dict[str, float | int] = {}
    for pair in (match.group(3) or "").split():
        key, sep, raw = pair.partition("=")
        if not sep or not _KEY.match(key) or key in RESERVED_KEYS:
            continue
        value = _number(raw)
        if value is not None:
            metrics[key] = value
    return EpochLine(int(match.group(1)), int(match.group(2)), metrics)


def _number(raw: str) -> float | int | None:
    """Ints stay ints; NaN and infinities are dropped because JSON cannot carry them and
    every client of the API speaks JSON (the raw line is still in the log)."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None

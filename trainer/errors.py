"""What a run of the trainer raises for `python -m trainer` to turn into an exit status
(trainer.cli): one module for the trainer's own exceptions, torch-free. The data loaders'
`DataError` (trainer.data) and the circuit's (trainer.circuit.errors) stay with their
packages."""

from __future__ import annotations

import os
from pathlib import Path


class RunConfigError(ValueError):
    """An argument combination found invalid only once the model or device is known: exit 2,
    like an invalid flag. (Not service.config.ConfigError, an invalid environment variable
    of the service.)"""


class Diverged(ArithmeticError):
    """The training loss is no longer finite: every later step would only train on NaN, and
    a network saved from it would predict one class. The run fails (exit 1), saying where."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(
            f"the training loss became {loss} in epoch {epoch}; nothing was saved from this "
            "epoch (a smaller learningRate or a larger groupSumTau keeps it finite)"
        )


class BadCheckpoint(Exception):
    """A file that cannot be resumed from; `reason` says why in a few words."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"cannot resume from {path}: {reason}")
        self.path = str(path)
        self.reason = reason


class CheckpointedStop(Exception):
    """Raised out of the training loop once a requested checkpoint is written (or could not
    be: `path` is None); `python -m trainer` exits with protocol.EXIT_CHECKPOINTED."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(f"stopped on request, checkpoint {path}")
        self.path = path

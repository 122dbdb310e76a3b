"""What a run of the trainer raises for `python -m trainer` to turn into an exit status
(trainer.cli): one module for the trainer's own exceptions, torch-free. The data loaders'
`DataError` (trainer.data) and the circuit's (trainer.circuit.errors) stay with their
packages."""

from __future__ import annotations


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

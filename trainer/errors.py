"""What a run of the trainer raises for `python -m trainer` to turn into an exit status
(trainer.cli): one module for the trainer's own exceptions, torch-free. The data loaders'
`DataError` (trainer.data) and the circuit's (trainer.circuit.errors) stay with their
packages."""

from __future__ import annotations


class RunConfigError(ValueError):
    """An argument combination found invalid only once the model or device is known: exit 2,
    like an invalid flag. (Not service.config.ConfigError, an invalid environment variable
    of the service.)"""

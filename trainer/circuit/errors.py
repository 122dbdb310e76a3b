"""What the circuit package raises: one module for its exceptions (numpy-free, torch-free)."""

from __future__ import annotations


class CircuitError(RuntimeError):
    """The circuit could not be built or run; the message says why."""


class SimulationError(RuntimeError):
    """iverilog or vvp failed; the message has their output."""

"""Compile a trained logic gate network into a verified circuit: C library and Verilog.

    python -m trainer.circuit compile runs/x/network.json -o runs/x/circuit
    build_circuit(network_path, out_dir) -> the job document's `circuit` field

numpy only (no torch), so the worker can import it cheaply; the exports load lazily. The
trainer's CIRCUIT line is trainer/protocol.py's `Circuit`. See docs/circuits.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainer.circuit.errors import CircuitError, SimulationError

if TYPE_CHECKING:
    from trainer.circuit.api import build_circuit
    from trainer.circuit.build import find_compiler
    from trainer.circuit.bundle import CompiledCircuit, compile_network, open_circuit

_LAZY = {
    "build_circuit": "trainer.circuit.api",
    "find_compiler": "trainer.circuit.build",
    "CompiledCircuit": "trainer.circuit.bundle",
    "compile_network": "trainer.circuit.bundle",
    "open_circuit": "trainer.circuit.bundle",
}

__all__ = [
    "CircuitError",
    "CompiledCircuit",
    "SimulationError",
    "build_circuit",
    "compile_network",
    "find_compiler",
    "open_circuit",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainer.circuit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""Compile a trained logic gate network into a verified circuit: C library and Verilog.

    python -m trainer.circuit compile runs/x/network.json -o runs/x/circuit
    build_circuit(network_path, out_dir) -> the job document's `circuit` field

numpy only (no torch), so the worker can import it cheaply. See docs/circuits.md.
"""

from trainer.circuit.api import RESULT_KEYS, build_circuit
from trainer.circuit.build import CircuitError, find_compiler
from trainer.circuit.bundle import CompiledCircuit, compile_network, open_circuit
from trainer.circuit.verilog import SimulationError

__all__ = [
    "RESULT_KEYS",
    "CircuitError",
    "CompiledCircuit",
    "SimulationError",
    "build_circuit",
    "compile_network",
    "find_compiler",
    "open_circuit",
]

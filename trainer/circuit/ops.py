"""Truth-table arithmetic on difflogic's 16 gate ids, shared by the passes and the backends.

Gate g outputs bit (3 - (2a + b)) of g (so 1 = AND, 6 = XOR, 3 = pass A). Inverting or
swapping a gate's inputs permutes its truth table, so such rewrites never need a NOT gate:
they change the id. These helpers are that bookkeeping, kept in one place.
"""

from __future__ import annotations

from collections.abc import Callable

from trainer.gates import GATE_NAMES as GATE_NAMES  # re-exported for the circuit package
from trainer.gates import NUM_GATES

NUM_OPS = NUM_GATES
FALSE, AND, A_AND_NOT_B, PASS_A, NOT_A_AND_B, PASS_B, XOR, OR = range(8)
NOT_B, NOT_A, TRUE = 10, 12, 15
# Ops whose output does not change when a and b are swapped.
SYMMETRIC: frozenset[int] = frozenset({0, 1, 6, 7, 8, 9, 14, 15})


def evaluate(op: int, a: int, b: int) -> int:
    """The output bit of gate `op` on input bits a, b."""
    return (op >> (3 - (2 * a + b))) & 1


def _table(fn: Callable[[int, int], int]) -> int:
    """The id of the gate whose output on (a, b) is fn(a, b)."""
    return sum(fn(a, b) << (3 - (2 * a + b)) for a in (0, 1) for b in (0, 1))


def negate_a(op: int) -> int:
    """The id of op(NOT a, b): what a gate becomes when its input a arrives inverted."""
    return _table(lambda a, b: evaluate(op, 1 - a, b))


def negate_b(op: int) -> int:
    """The id of op(a, NOT b)."""
    return _table(lambda a, b: evaluate(op, a, 1 - b))


def swap_inputs(op: int) -> int:
    """The id of op(b, a): the same function with its inputs exchanged."""
    return _table(lambda a, b: evaluate(op, b, a))


def complement(op: int) -> int:
    """The id of NOT op(a, b)."""
    return 15 - op


def restrict_a(op: int, value: int) -> tuple[int, int]:
    """(op(value, 0), op(value, 1)): the one-input function left when a is the constant."""
    return evaluate(op, value, 0), evaluate(op, value, 1)


def restrict_b(op: int, value: int) -> tuple[int, int]:
    """(op(0, value), op(1, value)): the one-input function left when b is the constant."""
    return evaluate(op, 0, value), evaluate(op, 1, value)


def diagonal(op: int) -> tuple[int, int]:
    """(op(0, 0), op(1, 1)): the one-input function of a gate that reads one signal twice."""
    return evaluate(op, 0, 0), evaluate(op, 1, 1)


NEGATE_A: tuple[int, ...] = tuple(negate_a(op) for op in range(NUM_OPS))
NEGATE_B: tuple[int, ...] = tuple(negate_b(op) for op in range(NUM_OPS))
SWAP: tuple[int, ...] = tuple(swap_inputs(op) for op in range(NUM_OPS))

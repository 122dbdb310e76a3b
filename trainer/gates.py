"""The 16 two-input Boolean functions and their real-valued relaxations.

Every relaxed gate of difflogic is an affine function of a, b and a*b, so a mixture of the
16 gates under probabilities p is itself `c0 + c1*a + c2*b + c3*a*b` with `c = p @ COEFFS`.
That identity is what makes our layer fast: four numbers per gate instead of sixteen ops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.lazy import LazyModule

if TYPE_CHECKING:
    import torch as torch_types

# Imported on first use: the API reads gate names and ids without torch (trainer.lazy).
torch = LazyModule("torch")

# Gate ids follow difflogic: the truth table over (a, b) = 00, 01, 10, 11 read as a 4-bit
# number, most significant bit first, is the id. So gate i outputs bit (3 - (2a + b)) of i.
GATE_NAMES: tuple[str, ...] = (
    "FALSE",
    "A AND B",
    "A AND NOT B",
    "A",
    "NOT A AND B",
    "B",
    "A XOR B",
    "A OR B",
    "NOT (A OR B)",
    "NOT (A XOR B)",
    "NOT B",
    "A OR NOT B",
    "NOT A",
    "NOT A OR B",
    "NOT (A AND B)",
    "TRUE",
)
NUM_GATES = 16
PASS_THROUGH_A = 3  # the gate the residual initialisation makes dominant

# Rows: gate id; columns: coefficients of 1, a, b, a*b (probabilistic semantics, as difflogic).
_COEFFS: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 0, 0),
    (0, 0, 0, 1),
    (0, 1, 0, -1),
    (0, 1, 0, 0),
    (0, 0, 1, -1),
    (0, 0, 1, 0),
    (0, 1, 1, -2),
    (0, 1, 1, -1),
    (1, -1, -1, 1),
    (1, -1, -1, 2),
    (1, 0, -1, 0),
    (1, 0, -1, 1),
    (1, -1, 0, 0),
    (1, -1, 0, 1),
    (1, 0, 0, -1),
    (1, 0, 0, 0),
)


def coefficient_matrix(
    dtype: torch_types.dtype | None = None, device: torch_types.device | str | None = None
) -> torch_types.Tensor:
    """The fixed (16, 4) map from gate probabilities to affine coefficients (float32 by
    default)."""
    return torch.tensor(_COEFFS, dtype=dtype or torch.float32, device=device)


def truth_table_bit(gate: int, a: int, b: int) -> int:
    """The Boolean output of gate `gate` on inputs a, b (0 or 1)."""
    return (gate >> (3 - (2 * a + b))) & 1

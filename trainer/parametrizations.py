"""The nine maps from a neuron's 16 gate logits to probabilities (`--gate-optimizer`).

Each map has a training form (which may add noise) and a noise-free relaxed form, used for
the relaxed test accuracy. Evaluation mode ignores both and takes the argmax gate. The
formulas are in docs/trainer.md; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import entmax
import torch

from trainer.gates import NUM_GATES, PASS_THROUGH_A

GATE_OPTIMIZERS: tuple[str, ...] = (
    "softmax",
    "gumbel_softmax",
    "sparsemax",
    "gumbel_sparsemax",
    "sparsemax_noise",
    "log_softmax",
    "entmax",
    "relu_normalized",
    "balenas",
)

# Probability the residual initialisation gives the pass-through gate "A".
RESIDUAL_PASS_PROB = 0.9
# Floor on the surprisal in `log_softmax`, so a saturated gate gets a finite weight.
_MIN_SURPRISAL = 1e-6


def _gumbel_like(z: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(z).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def _inverse_surprisal(z: torch.Tensor) -> torch.Tensor:
    w = (-torch.log_softmax(z, dim=-1)).clamp_min(_MIN_SURPRISAL).reciprocal()
    return w / w.sum(dim=-1, keepdim=True)


def _relu_normalized(z: torch.Tensor) -> torch.Tensor:
    r = torch.relu(z)
    total = r.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(r, 1.0 / r.shape[-1])
    return torch.where(total > 0, r / total.clamp_min(torch.finfo(r.dtype).tiny), uniform)


def _balenas(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (entmax.sparsemax(z, dim=-1) + entmax.entmax15(z, dim=-1))


@dataclass(frozen=True)
class Parametrization:
    """One `--gate-optimizer`: how logits become gate probabilities.

    `temperature` is `noiseTemp`: the Gumbel temperature for the gumbel_* maps, the scale
    of the Gaussian logit noise for sparsemax_noise, unused by the others.
    """

    name: str
    temperature: float = 0.2

    def __post_init__(self) -> None:
        if self.name not in GATE_OPTIMIZERS:
            raise ValueError(
                f"unknown gate optimizer {self.name!r}; choose one of {', '.join(GATE_OPTIMIZERS)}"
            )
        if self.temperature < 0:
            raise ValueError(f"noise temperature must be >= 0, got {self.temperature}")
        if self.name.startswith("gumbel_") and self.temperature == 0:
            raise ValueError(f"{self.name} needs a noise temperature > 0")

    def probs(self, logits: torch.Tensor, *, noise: bool) -> torch.Tensor:
        """Probabilities over the last axis; `noise` is on while training."""
        z, t = logits, self.temperature
        match self.name:
            case "softmax":
                return torch.softmax(z, dim=-1)
            case "gumbel_softmax":
                return torch.softmax((z + _gumbel_like(z) if noise else z) / t, dim=-1)
            case "sparsemax":
                return entmax.sparsemax(z, dim=-1)
            case "gumbel_sparsemax":
                return entmax.sparsemax((z + _gumbel_like(z) if noise else z) / t, dim=-1)
            case "sparsemax_noise":
                if noise and t > 0:
                    z = z + t * torch.randn_like(z)
                return entmax.sparsemax(z, dim=-1)
            case "log_softmax":
                return _inverse_surprisal(z)
            case "entmax":
                return entmax.entmax15(z, dim=-1)
            case "relu_normalized":
                return _relu_normalized(z)
            case "balenas":
                return _balenas(z)
        raise AssertionError(self.name)

    def init_logits(self, neurons: int, *, residual: bool) -> torch.Tensor:
        """Initial logits `(neurons, 16)`, drawn from torch's global generator.

        Random init is N(0, 1) as difflogic's (|N(0, 1)| for relu_normalized, so no gate
        starts dead). Residual init is a constant base with the "A" logit raised until the
        map gives "A" probability RESIDUAL_PASS_PROB, the pass-through start of Petersen et
        al. 2024; the sparse maps keep every gate in the support at that point, so all
        logits still get gradients.
        """
        if residual:
            base, lift = _residual_logits(self.name, self.temperature)
            z = torch.full((neurons, NUM_GATES), base)
            z[:, PASS_THROUGH_A] = lift
            return z
        z = torch.randn(neurons, NUM_GATES)
        return z.abs_() if self.name == "relu_normalized" else z


@cache
def _residual_logits(name: str, temperature: float) -> tuple[float, float]:
    """(base, lift) such that the expected "A" probability is RESIDUAL_PASS_PROB.

    The gumbel maps are calibrated on softmax(z): at small temperatures they sample gate i
    with probability softmax(z)_i, whatever the temperature.
    """
    base = 0.1 if name == "relu_normalized" else 0.0
    calibrate = "softmax" if name.startswith("gumbel_") else name
    param = Parametrization(calibrate, temperature)
    lo, hi = base, base + 1.0
    z = torch.full((NUM_GATES,), base, dtype=torch.float64)

    def prob_a(lift: float) -> float:
        z[PASS_THROUGH_A] = lift
        return float(param.probs(z, noise=False)[PASS_THROUGH_A])

    while prob_a(hi) < RESIDUAL_PASS_PROB:
        lo, hi = hi, base + 2 * (hi - base)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if prob_a(mid) < RESIDUAL_PASS_PROB else (lo, mid)
    return base, hi

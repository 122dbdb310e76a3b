"""The gate parametrizations (`gateOptimizer`): maps from a neuron's 16 gate logits to
probabilities, as a registry.

Adding one is one `@gate_map(name, doc)` entry below: its name becomes a valid
`gateOptimizer` in the API, the CLI, the web form and the trainer, its doc line a row of the
table in docs/trainer.md, and every parametrized test runs on it (docs/design.md, "How to
add a parametrization").

Each map has a training form (which may add noise) and a noise-free relaxed form, used for
the relaxed test accuracy; `noise` says which. Evaluation mode ignores both and takes the
argmax gate. torch and entmax are imported on first use (trainer.lazy): the API validates
names from this registry without either installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from trainer.gates import NUM_GATES, PASS_THROUGH_A
from trainer.lazy import LazyModule

if TYPE_CHECKING:
    from torch import Tensor

torch = LazyModule("torch")
entmax = LazyModule("entmax")

# The gradient estimators (`gateEstimator`): `soft` trains the relaxed mixture itself;
# `straight_through` runs the argmax gate forward and passes the relaxed map's gradient back.
ESTIMATORS: tuple[str, ...] = ("soft", "straight_through")
# Default probability the residual initialisation gives the pass-through gate "A"
# (`residualPassProb`). 0.9 with equal other logits froze the network as pass-through: every
# argmax was "A" and stayed so (issue 21's table (a)).
RESIDUAL_PASS_PROB = 0.3
# Adam's step size for a map that does not set its own (`learningRate` left null).
DEFAULT_LEARNING_RATE = 0.01
# Floor on the surprisal in `log_softmax`, so a saturated gate gets a finite weight.
_MIN_SURPRISAL = 1e-6

ProbsFn = Callable[["Tensor", float, bool], "Tensor"]


@dataclass(frozen=True)
class GateMap:
    """One registered parametrization.

    `probs(logits, temperature, noise)` maps the last axis of 16 logits to probabilities.
    `divides_by_temperature`: the map divides by `noiseTemp`, so it must be > 0 (a rule the
    API and the trainer both check, trainer.options). `calibrate_as`: the map whose noise-free
    probabilities the residual initialisation is tuned on (the gumbel maps sample gate i with
    probability softmax(z)_i at small temperatures). `positive_init`: initial logits are
    |N(0, 1)| instead of N(0, 1), so that no gate starts dead under a ReLU. `learning_rate`:
    the map's default Adam step size (`learningRate` null), measured by
    bench/discretization.py (docs/trainer.md, "Discretization").
    """

    name: str
    doc: str
    probs: ProbsFn
    divides_by_temperature: bool = False
    calibrate_as: str | None = None
    positive_init: bool = False
    residual_base: float = 0.0
    learning_rate: float = DEFAULT_LEARNING_RATE


REGISTRY: dict[str, GateMap] = {}


def gate_map(name: str, doc: str, **options: object) -> Callable[[ProbsFn], ProbsFn]:
    """Register `fn` as the parametrization `name`; `doc` is its formula in one line."""

    def register(fn: ProbsFn) -> ProbsFn:
        if name in REGISTRY:
            raise ValueError(f"gate parametrization {name!r} is registered twice")
        REGISTRY[name] = GateMap(name, doc, fn, **options)  # type: ignore[arg-type]
        return fn

    return register


def _gumbel_like(z: Tensor) -> Tensor:
    u = torch.rand_like(z).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


@gate_map("softmax", "softmax(z), difflogic's parametrization")
def _softmax(z: Tensor, t: float, noise: bool) -> Tensor:
    return torch.softmax(z, dim=-1)


@gate_map(
    "gumbel_softmax",
    "softmax((z + g) / t) with Gumbel noise g while training, softmax(z / t) relaxed",
    divides_by_temperature=True,
    calibrate_as="softmax",
    learning_rate=0.5,
)
def _gumbel_softmax(z: Tensor, t: float, noise: bool) -> Tensor:
    return torch.softmax((z + _gumbel_like(z) if noise else z) / t, dim=-1)


@gate_map("sparsemax", "sparsemax(z): Euclidean projection onto the simplex, exact zeros")
def _sparsemax(z: Tensor, t: float, noise: bool) -> Tensor:
    return entmax.sparsemax(z, dim=-1)


@gate_map(
    "gumbel_sparsemax",
    "sparsemax((z + g) / t) with Gumbel noise g while training, sparsemax(z / t) relaxed",
    divides_by_temperature=True,
    calibrate_as="softmax",
    learning_rate=0.5,
)
def _gumbel_sparsemax(z: Tensor, t: float, noise: bool) -> Tensor:
    return entmax.sparsemax((z + _gumbel_like(z) if noise else z) / t, dim=-1)


@gate_map(
    "sparsemax_noise",
    "sparsemax(z + t * N(0, 1)) while training, sparsemax(z) relaxed",
)
def _sparsemax_noise(z: Tensor, t: float, noise: bool) -> Tensor:
    if noise and t > 0:
        z = z + t * torch.randn_like(z)
    return entmax.sparsemax(z, dim=-1)


@gate_map(
    "log_softmax",
    "inverse surprisal: w_i = 1 / -log softmax(z)_i, normalized; flatter than softmax",
    learning_rate=0.03,
)
def _log_softmax(z: Tensor, t: float, noise: bool) -> Tensor:
    w = (-torch.log_softmax(z, dim=-1)).clamp_min(_MIN_SURPRISAL).reciprocal()
    return w / w.sum(dim=-1, keepdim=True)


@gate_map("entmax", "1.5-entmax(z): between softmax and sparsemax, sparse")
def _entmax(z: Tensor, t: float, noise: bool) -> Tensor:
    return entmax.entmax15(z, dim=-1)


@gate_map(
    "relu_normalized",
    "relu(z) / sum relu(z), uniform when every logit is <= 0",
    positive_init=True,
    residual_base=0.1,
)
def _relu_normalized(z: Tensor, t: float, noise: bool) -> Tensor:
    r = torch.relu(z)
    total = r.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(r, 1.0 / r.shape[-1])
    return torch.where(total > 0, r / total.clamp_min(torch.finfo(r.dtype).tiny), uniform)


@gate_map("balenas", "(sparsemax(z) + 1.5-entmax(z)) / 2: a balanced sparse mix")
def _balenas(z: Tensor, t: float, noise: bool) -> Tensor:
    return 0.5 * (entmax.sparsemax(z, dim=-1) + entmax.entmax15(z, dim=-1))


GATE_OPTIMIZERS: tuple[str, ...] = tuple(REGISTRY)


@dataclass(frozen=True)
class Parametrization:
    """One `gateOptimizer` with its temperature, estimator and residual strength, as a layer
    uses it.

    `temperature` is `noiseTemp`: the Gumbel temperature for the gumbel_* maps, the scale
    of the Gaussian logit noise for sparsemax_noise, unused by the others. `estimator` is
    `gateEstimator`, `pass_prob` is `residualPassProb`.
    """

    name: str
    temperature: float = 0.2
    estimator: str = "soft"
    pass_prob: float = RESIDUAL_PASS_PROB

    def __post_init__(self) -> None:
        entry = REGISTRY.get(self.name)
        if entry is None:
            raise ValueError(
                f"unknown gate optimizer {self.name!r}; choose one of {', '.join(GATE_OPTIMIZERS)}"
            )
        if self.temperature < 0:
            raise ValueError(f"noise temperature must be >= 0, got {self.temperature}")
        if entry.divides_by_temperature and self.temperature == 0:
            raise ValueError(f"{self.name} needs a noise temperature > 0")
        if self.estimator not in ESTIMATORS:
            raise ValueError(
                f"unknown gate estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}"
            )
        if not 1 / NUM_GATES < self.pass_prob < 1:
            raise ValueError(
                f"residual pass probability must be in (1/{NUM_GATES}, 1), got {self.pass_prob}"
            )

    @property
    def entry(self) -> GateMap:
        return REGISTRY[self.name]

    def probs(self, logits: Tensor, *, noise: bool) -> Tensor:
        """The relaxed probabilities over the last axis; `noise` is on while training."""
        return self.entry.probs(logits, self.temperature, noise)

    def train_probs(self, logits: Tensor) -> Tensor:
        """What a training step mixes gates by, under the estimator.

        `soft`: the noisy relaxed probabilities. `straight_through`: the argmax gate of the
        logits as a one-hot row plus `soft - soft.detach()`, which is exactly zero forward
        (the step computes the discrete network that eval mode and the circuit compute) and
        carries the noisy relaxed probabilities' gradient backward. Taking the noisy
        probabilities' argmax instead (a Gumbel sample) learned less on digits
        (bench/discretization.py: gumbel_sparsemax 0.847 against 0.881, sparsemax_noise
        0.772 against 0.847 in table (a)). It acts on probabilities, so every backend (C++,
        torch, difflogic's CUDA kernel) runs it unchanged.
        """
        soft = self.probs(logits, noise=True)
        if self.estimator == "soft":
            return soft
        index = logits.argmax(dim=-1)
        hard = torch.nn.functional.one_hot(index, logits.shape[-1]).to(soft.dtype)
        return hard + (soft - soft.detach())

    def init_logits(self, neurons: int, *, residual: bool) -> Tensor:
        """Initial logits `(neurons, 16)`, drawn from torch's global generator.

        Random init is N(0, 1) as difflogic's (|N(0, 1)| for maps with `positive_init`).
        Residual init is the pass-through start of Petersen et al. 2024, as strong as
        `pass_prob` says: the "A" logit is raised above a constant base until the map gives
        "A" that probability, and the other logits are the base plus the random init's
        noise. The noise breaks the ties between the other fifteen (with equal logits every
        argmax is "A" and no gradient ever changes it: the network stays a wire), and a
        modest `pass_prob` leaves the other gates in reach.
        """
        z = torch.randn(neurons, NUM_GATES)
        if self.entry.positive_init:
            z.abs_()
        if residual:
            base, lift = _residual_logits(self.name, self.temperature, self.pass_prob)
            z.add_(base)
            z[:, PASS_THROUGH_A] = lift
        return z


@cache
def _residual_logits(name: str, temperature: float, pass_prob: float) -> tuple[float, float]:
    """(base, lift) such that "A" has probability `pass_prob` when the others are `base`."""
    entry = REGISTRY[name]
    base = entry.residual_base
    param = Parametrization(entry.calibrate_as or name, temperature)
    lo, hi = base, base + 1.0
    z = torch.full((NUM_GATES,), base, dtype=torch.float64)

    def prob_a(lift: float) -> float:
        z[PASS_THROUGH_A] = lift
        return float(param.probs(z, noise=False)[PASS_THROUGH_A])

    while prob_a(hi) < pass_prob:
        lo, hi = hi, base + 2 * (hi - base)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if prob_a(mid) < pass_prob else (lo, mid)
    return base, hi

"""The network: logic layers then GroupSum, and `build_model`, the library entry point."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from trainer.layer import BACKENDS, GroupSum, LogicLayer, resolve_backend
from trainer.parametrizations import GATE_OPTIMIZERS, Parametrization


def layer_widths(gates: int, network_layers: int, grouping: int) -> list[int]:
    """Every layer has `gates` neurons except the last, rounded up to a multiple of grouping.

    GroupSum needs the last width divisible by the class count; rounding up (3332 -> 3340 for
    10 classes) keeps the seed's example valid and changes the size by less than `grouping`.
    """
    last = -(-gates // grouping) * grouping
    return [gates] * (network_layers - 1) + [last]


class LogicNet(torch.nn.Module):
    """Maps (batch, in_dim) floats in [0, 1] to (batch, grouping) class scores."""

    def __init__(
        self,
        in_dim: int,
        widths: list[int],
        *,
        grouping: int,
        group_sum_tau: float,
        parametrization: Parametrization,
        residual_layers: int,
        backend: str,
    ) -> None:
        super().__init__()
        self.in_dim, self.widths, self.backend = in_dim, widths, backend
        dims = [in_dim, *widths]
        self.layers = torch.nn.ModuleList(
            LogicLayer(
                dims[i],
                dims[i + 1],
                parametrization,
                residual=i < residual_layers,
                backend=backend,
            )
            for i in range(len(widths))
        )
        self.group_sum = GroupSum(grouping, group_sum_tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected input (batch, {self.in_dim}), got {tuple(x.shape)}")
        h = x.t().contiguous()
        for layer in self.layers:
            h = layer(h)
        return self.group_sum(h)

    def backend_on(self, device: torch.device | str) -> str:
        """The backend the layers resolve to on `device` (raises ValueError if none can)."""
        return resolve_backend(self.backend, torch.device(device))

    def set_relaxed_eval(self, relaxed: bool) -> None:
        for layer in self.layers:
            assert isinstance(layer, LogicLayer)
            layer.relaxed_eval = relaxed


@contextmanager
def relaxed_evaluation(model: LogicNet) -> Iterator[LogicNet]:
    """Eval mode with the noise-free relaxed gates instead of the argmax ones."""
    was_training = model.training
    model.eval()
    model.set_relaxed_eval(True)
    try:
        yield model
    finally:
        model.set_relaxed_eval(False)
        model.train(was_training)


def build_model(
    in_dim: int,
    *,
    gates: int,
    network_layers: int,
    grouping: int,
    group_sum_tau: float,
    gate_optimizer: str,
    residual_layers: int = 0,
    noise_temp: float = 0.2,
    backend: str = "auto",
) -> LogicNet:
    """A logic gate network; `.train()` relaxed, `.eval()` discrete (docs/design.md,
    "Trainer output").

    Connections and initial logits come from torch's global generator: seed it first for a
    reproducible network. Raises ValueError naming the bad argument.
    """
    checks = [
        (in_dim >= 1, f"in_dim must be >= 1, got {in_dim}"),
        (gates >= 1, f"gates must be >= 1, got {gates}"),
        (network_layers >= 1, f"network_layers must be >= 1, got {network_layers}"),
        (grouping >= 1, f"grouping must be >= 1, got {grouping}"),
        (group_sum_tau > 0, f"group_sum_tau must be > 0, got {group_sum_tau}"),
        (residual_layers >= 0, f"residual_layers must be >= 0, got {residual_layers}"),
        (
            residual_layers <= network_layers,
            f"residual_layers ({residual_layers}) must not exceed "
            f"network_layers ({network_layers})",
        ),
        (
            gate_optimizer in GATE_OPTIMIZERS,
            f"unknown gate_optimizer {gate_optimizer!r}; "
            f"choose one of {', '.join(GATE_OPTIMIZERS)}",
        ),
        (backend in BACKENDS, f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return LogicNet(
        in_dim,
        layer_widths(gates, network_layers, grouping),
        grouping=grouping,
        group_sum_tau=group_sum_tau,
        parametrization=Parametrization(gate_optimizer, noise_temp),
        residual_layers=residual_layers,
        backend=backend,
    )

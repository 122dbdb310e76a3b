"""The network: logic layers then GroupSum, and `build_model`, the library entry point."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, overload

import torch

from trainer.convspec import ConvSpec, block_shapes
from trainer.data.catalog import ImageShape
from trainer.layer import BACKENDS, GroupSum, LogicLayer, resolve_backend
from trainer.parametrizations import GATE_OPTIMIZERS, RESIDUAL_PASS_PROB, Parametrization

if TYPE_CHECKING:
    from trainer.conv import ConvLogicNet


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

    def discrete_layers(self) -> list[dict[str, Any]]:
        """The argmax network's layers as network.json holds them (trainer.export)."""
        return [
            {
                "in_dim": layer.in_dim,
                "gates": layer.out_dim,
                "a": layer.idx_a.cpu().tolist(),
                "b": layer.idx_b.cpu().tolist(),
                "op": layer.gates().cpu().tolist(),
            }
            for layer in self.layers
            if isinstance(layer, LogicLayer)
        ]


@contextmanager
def relaxed_evaluation(model: Any) -> Iterator[Any]:
    """Eval mode with the noise-free relaxed gates instead of the argmax ones."""
    was_training = model.training
    model.eval()
    model.set_relaxed_eval(True)
    try:
        yield model
    finally:
        model.set_relaxed_eval(False)
        model.train(was_training)


@overload
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
    gate_estimator: str = "soft",
    residual_pass_prob: float = RESIDUAL_PASS_PROB,
    backend: str = "auto",
    architecture: Literal["dense"] = "dense",
    image: ImageShape | None = None,
    conv: ConvSpec | None = None,
) -> LogicNet: ...


@overload
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
    gate_estimator: str = "soft",
    residual_pass_prob: float = RESIDUAL_PASS_PROB,
    backend: str = "auto",
    architecture: str,
    image: ImageShape | None = None,
    conv: ConvSpec | None = None,
) -> LogicNet | ConvLogicNet: ...


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
    gate_estimator: str = "soft",
    residual_pass_prob: float = RESIDUAL_PASS_PROB,
    backend: str = "auto",
    architecture: str = "dense",
    image: ImageShape | None = None,
    conv: ConvSpec | None = None,
) -> LogicNet | ConvLogicNet:
    """A logic gate network; `.train()` relaxed, `.eval()` discrete (docs/design.md,
    "Trainer output").

    `architecture` "dense" (the default) gives a LogicNet of `network_layers` layers;
    "conv" a trainer.conv.ConvLogicNet: the blocks of `conv` over inputs of shape `image`
    (in_dim must be its size), then `network_layers` dense layers. `residual_layers` counts
    conv blocks first, then dense layers; `residual_pass_prob` is their pass-through gate's
    initial probability. `gate_estimator`: "soft" or "straight_through"
    (trainer.parametrizations.Parametrization.train_probs).

    Connections and initial logits come from torch's global generator: seed it first for a
    reproducible network. Raises ValueError naming the bad argument.
    """
    blocks = 0
    if architecture == "conv":
        if image is None or conv is None:
            raise ValueError("architecture conv needs an image shape and a ConvSpec")
        if in_dim != image.inputs:
            raise ValueError(f"in_dim {in_dim} is not the image's {image.inputs} inputs")
        block_shapes(image, conv)  # ValueError where a block does not fit
        blocks = len(conv.channels)
    elif architecture != "dense":
        raise ValueError(f"unknown architecture {architecture!r}; choose dense or conv")
    checks = [
        (in_dim >= 1, f"in_dim must be >= 1, got {in_dim}"),
        (gates >= 1, f"gates must be >= 1, got {gates}"),
        (network_layers >= 1, f"network_layers must be >= 1, got {network_layers}"),
        (grouping >= 1, f"grouping must be >= 1, got {grouping}"),
        (group_sum_tau > 0, f"group_sum_tau must be > 0, got {group_sum_tau}"),
        (residual_layers >= 0, f"residual_layers must be >= 0, got {residual_layers}"),
        (
            residual_layers <= network_layers + blocks,
            f"residual_layers ({residual_layers}) must not exceed "
            f"network_layers ({network_layers})"
            + (f" plus conv blocks ({blocks})" if blocks else ""),
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
    parametrization = Parametrization(
        gate_optimizer, noise_temp, gate_estimator, residual_pass_prob
    )
    if architecture == "conv":
        from trainer.conv import ConvLogicNet

        assert image is not None and conv is not None
        return ConvLogicNet(
            image,
            conv,
            layer_widths(gates, network_layers, grouping),
            grouping=grouping,
            group_sum_tau=group_sum_tau,
            parametrization=parametrization,
            residual_layers=residual_layers,
            backend=backend,
        )
    return LogicNet(
        in_dim,
        layer_widths(gates, network_layers, grouping),
        grouping=grouping,
        group_sum_tau=group_sum_tau,
        parametrization=parametrization,
        residual_layers=residual_layers,
        backend=backend,
    )

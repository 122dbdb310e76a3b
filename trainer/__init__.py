"""Differentiable logic gate networks: `build_model`, the layer, data sets, `python -m trainer`.

The exports load lazily, so `python -m trainer` can set up the OpenMP environment
(trainer.runtime) before anything imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.model import LogicNet, build_model, relaxed_evaluation
    from trainer.parametrizations import GATE_OPTIMIZERS

__all__ = ["GATE_OPTIMIZERS", "LogicNet", "build_model", "relaxed_evaluation"]


def __getattr__(name: str) -> Any:
    if name in ("LogicNet", "build_model", "relaxed_evaluation"):
        from trainer import model

        return getattr(model, name)
    if name == "GATE_OPTIMIZERS":
        from trainer import parametrizations

        return parametrizations.GATE_OPTIMIZERS
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")

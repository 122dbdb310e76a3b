"""Differentiable logic gate networks: `build_model`, the layer, data sets, `python -m trainer`."""

from trainer.model import LogicNet, build_model, relaxed_evaluation
from trainer.parametrizations import GATE_OPTIMIZERS

__all__ = ["GATE_OPTIMIZERS", "LogicNet", "build_model", "relaxed_evaluation"]

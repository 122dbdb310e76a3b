"""The difflogic package's CUDA kernel as a backend of our layer, where it imports.

`difflogic_cuda` exists only where difflogic was built with its CUDA extension (a GPU
machine with nvcc). Its kernels take any (gates, 16) probability matrix, so every one of our
nine parametrizations runs on it: we hand it the probabilities and let autograd carry its
gradient back into the parametrization.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

_module: ModuleType | None = None
_import_error: str | None = None


def difflogic_cuda() -> ModuleType | None:
    """The extension module, or None when it does not import (the reason is kept)."""
    global _module, _import_error
    if _module is None and _import_error is None:
        try:
            _module = importlib.import_module("difflogic_cuda")
        except ImportError as exc:
            _import_error = str(exc)
    return _module


def unavailable_reason() -> str:
    difflogic_cuda()
    return _import_error or ""


def reverse_index(
    ia: torch.Tensor, ib: torch.Tensor, in_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each input, the gates reading it: difflogic's CSR pair for its backward_x.

    Returns (start, gates): the gates reading input i are gates[start[i]:start[i + 1]].
    A gate reading one input twice is listed twice, and difflogic's backward_x then takes
    the derivative by its first input twice: trainer.layer keeps such layers (in_dim == 1,
    the only ones trainer.layer.random_connections makes) on the torch path.
    Every shape here follows from the arguments' shapes (index_add_, not bincount), so the
    function also runs on fake tensors (tests/trainer/test_trainer_cuda_fake.py).
    """
    gate_ids = torch.arange(ia.numel(), device=ia.device, dtype=torch.int64)
    inputs = torch.cat([ia, ib])
    order = torch.sort(inputs, stable=True).indices
    gates = torch.cat([gate_ids, gate_ids])[order].contiguous()
    counts = torch.zeros(in_dim, dtype=torch.int64, device=ia.device)
    counts.index_add_(0, inputs, torch.ones_like(inputs))
    start = torch.zeros(in_dim + 1, dtype=torch.int64, device=ia.device)
    start[1:] = torch.cumsum(counts, 0)
    return start, gates


class DiffLogicFunction(torch.autograd.Function):
    """y = layer(x) through difflogic's kernels; x is (in_dim, batch), probs (gates, 16)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        probs: torch.Tensor,
        ia: torch.Tensor,
        ib: torch.Tensor,
        start: torch.Tensor,
        gates: torch.Tensor,
    ) -> torch.Tensor:
        ext = difflogic_cuda()
        if ext is None:
            raise RuntimeError(f"difflogic_cuda is not importable: {unavailable_reason()}")
        x = x.contiguous()
        probs = probs.to(x.dtype).contiguous()
        ctx.save_for_backward(x, probs, ia, ib, start, gates)
        return ext.forward(x, ia, ib, probs)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ext = difflogic_cuda()
        assert ext is not None
        x, probs, ia, ib, start, gates = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = ext.backward_x(x, ia, ib, probs, grad_y, start, gates)
        if ctx.needs_input_grad[1]:
            grad_w = ext.backward_w(x, ia, ib, grad_y)
        return grad_x, grad_w, None, None, None, None

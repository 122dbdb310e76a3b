"""A CPU stand-in for difflogic's CUDA extension, `difflogic_cuda`, transcribed from its
kernels (difflogic_src/difflogic/cuda/difflogic_kernel.cu, difflogic 0.1.0) in tensor ops.

Each function keeps the kernel's own arithmetic: the forward's 15 weighted terms in its
grouping, backward_w's four per-gate sums combined into 16 columns as the host code does,
and backward_x walking the reverse index (`given_x_indices_of_y_start/_of_y`) entry by entry
with the kernel's `idx_a == col` test. It also checks what the host code's CHECK_INPUT and
packed accessors require (contiguous tensors, int64 indices, one float dtype), so a wrong
argument from our wrapper fails here as it would on the GPU. The loops over the batch and
over gates become tensor ops; only the order of float additions can differ from the GPU's.

`install(monkeypatch)` plugs it in as trainer.kernels.difflogic_cuda's module.
"""

from __future__ import annotations

import types

import pytest
import torch

from trainer.kernels import difflogic_cuda as dl


def _check_input(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.is_contiguous(), "CHECK_CONTIGUOUS"


def _check_index(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.dtype == torch.int64, f"PackedTensorAccessor64<int64_t>, got {t.dtype}"
        assert t.dim() == 1


def forward(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """logic_layer_cuda_forward_kernel: y[col][row] from x[a[col]][row], x[b[col]][row]."""
    _check_input(x, a, b, w)
    _check_index(a, b)
    assert x.dtype == w.dtype and w.dim() == 2 and w.shape[1] == 16
    a_, b_ = x[a], x[b]
    w_ = [w[:, k : k + 1] for k in range(16)]
    ab = a_ * b_
    one = 1
    return (
        ((w_[1] * ab + w_[2] * (a_ - ab)) + (w_[3] * a_ + w_[4] * (b_ - ab)))
        + (
            (w_[5] * b_ + w_[6] * (a_ + b_ - 2 * a_ * b_))
            + (w_[7] * (a_ + b_ - ab) + w_[8] * (one - (a_ + b_ - ab)))
        )
    ) + (
        (
            (w_[9] * (one - (a_ + b_ - 2 * a_ * b_)) + w_[10] * (one - b_))
            + (w_[11] * (one - b_ + ab) + w_[12] * (one - a_))
        )
        + (w_[13] * (one - a_ + ab) + w_[14] * (one - ab) + w_[15])
    )


def backward_w(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, grad_y: torch.Tensor
) -> torch.Tensor:
    """logic_layer_cuda_backward_w: four sums per gate, then the host's 16 combinations."""
    _check_input(x, a, b, grad_y)
    _check_index(a, b)
    assert x.dtype == grad_y.dtype
    a_, b_ = x[a], x[b]
    g_ab = (a_ * b_ * grad_y).sum(1)
    g_a = (a_ * grad_y).sum(1)
    g_b = (b_ * grad_y).sum(1)
    g_ = grad_y.sum(1)
    return torch.stack(
        [
            torch.zeros_like(g_),
            g_ab,
            g_a - g_ab,
            g_a,
            g_b - g_ab,
            g_b,
            g_a + g_b - g_ab - g_ab,
            g_a + g_b - g_ab,
            g_ - g_a - g_b + g_ab,
            g_ - g_a - g_b + g_ab + g_ab,
            g_ - g_b,
            g_ - g_b + g_ab,
            g_ - g_a,
            g_ - g_a + g_ab,
            g_ - g_ab,
            g_,
        ],
        1,
    )


def backward_x(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    grad_y: torch.Tensor,
    start: torch.Tensor,
    readers: torch.Tensor,
) -> torch.Tensor:
    """logic_layer_cuda_backward_x_kernel: for input `col`, each reader gate idx_y adds
    dy/da if a[idx_y] == col, else dy/db (so a gate reading col twice adds dy/da twice)."""
    _check_input(x, a, b, w, grad_y, start, readers)
    _check_index(a, b, start, readers)
    assert start.numel() == x.shape[0] + 1 and x.dtype == w.dtype == grad_y.dtype
    counts = start[1:] - start[:-1]
    col = torch.repeat_interleave(
        torch.arange(x.shape[0], device=x.device), counts, output_size=readers.numel()
    )
    idx_y = readers
    wy = [w[idx_y, k : k + 1] for k in range(16)]
    one, two = 1, 2
    b_ = x[b[idx_y]]
    dy_da = (
        (wy[1] * b_ + wy[2] * (one - b_) + wy[3])
        + (wy[4] * -b_ + wy[6] * (one - two * b_) + wy[7] * (one - b_))
    ) + (
        (wy[8] * (b_ - one) + wy[9] * (two * b_ - one) + wy[11] * b_)
        + (-wy[12] + wy[13] * (b_ - one) + wy[14] * -b_)
    )
    a_ = x[a[idx_y]]
    dy_db = (
        (wy[1] * a_ + wy[2] * -a_ + wy[4] * (one - a_))
        + (wy[5] + wy[6] * (one - two * a_) + wy[7] * (one - a_))
    ) + (
        (wy[8] * (a_ - one) + wy[9] * (two * a_ - one) - wy[10])
        + (wy[11] * (a_ - one) + wy[13] * a_ + wy[14] * -a_)
    )
    is_a = (a[idx_y] == col).unsqueeze(1)
    dy_dx = torch.where(is_a, dy_da, dy_db)
    grad_x = torch.zeros_like(x)
    return grad_x.index_add_(0, col, dy_dx * grad_y[idx_y])


def module() -> types.ModuleType:
    out = types.ModuleType("difflogic_cuda")
    out.forward = forward  # type: ignore[attr-defined]
    out.backward_w = backward_w  # type: ignore[attr-defined]
    out.backward_x = backward_x  # type: ignore[attr-defined]
    return out


def install(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Make `difflogic_cuda()` return the stand-in, for this test."""
    standin = module()
    monkeypatch.setattr(dl, "_module", standin)
    monkeypatch.setattr(dl, "_import_error", None)
    return standin

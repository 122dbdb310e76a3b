"""trainer.cuda_step on a machine without a GPU: what it refuses, and that its eager step
(the one a short last batch takes, and the one captured) is trainer.loop's step. The capture
itself is checked on a GPU by bench/gpu_check.sh (stage parity: graph_vs_eager_*)."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.cuda_step import CapturedStep, eager_step
from trainer.device import make_optimizer
from trainer.model import build_model


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        12, gates=40, network_layers=2, grouping=4, group_sum_tau=3.0,
        gate_optimizer="sparsemax_noise", backend="torch",
    )  # fmt: skip


def test_a_captured_step_needs_cuda_and_a_capturable_adam() -> None:
    net = _net()
    x, y = torch.rand(20, 12), torch.randint(0, 4, (20,))
    with pytest.raises(ValueError, match="CUDA device"):
        CapturedStep(net, make_optimizer(net.parameters(), 0.01, "cpu"), x, y, 8)


def test_the_eager_step_is_the_loops_step_bit_for_bit() -> None:
    ours, loops = _net(), _net()
    loops.load_state_dict(copy.deepcopy(ours.state_dict()))
    opt_ours = make_optimizer(ours.parameters(), 0.01, "cpu")
    opt_loop = torch.optim.Adam(loops.parameters(), lr=0.01)
    x, y = (torch.rand(20, 12) > 0.5).to(torch.uint8), torch.randint(0, 4, (20,))
    for step in range(3):
        idx = torch.arange(step * 7, min(20, step * 7 + 7))
        torch.manual_seed(step)
        loss, scores = eager_step(ours, opt_ours, x[idx], y[idx])
        torch.manual_seed(step)  # trainer.loop.train_epoch's step
        xb, yb = x[idx].float(), y[idx]
        scores_loop = loops(xb)
        loss_loop = torch.nn.functional.cross_entropy(scores_loop, yb)
        opt_loop.zero_grad(set_to_none=True)
        loss_loop.backward()
        opt_loop.step()
        assert torch.equal(loss, loss_loop) and torch.equal(scores, scores_loop)
    for p, q in zip(ours.parameters(), loops.parameters(), strict=True):
        assert torch.equal(p, q)

"""The straightforward formulation difflogic uses on CPU: a weighted sum of 16 relaxed ops.

It stays in the package as the yardstick: the tests check our fast layer against it and
`bench/trainer_step.py` times it as the baseline. It is batch-major, `(batch, features)`,
as difflogic's Python implementation is, and slow because each of the 16 ops materialises
a `(batch, gates)` temporary, forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Op = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The relaxations in gate-id order (see trainer.gates for the id convention).
OPS: tuple[Op, ...] = (
    lambda a, b: torch.zeros_like(a),
    lambda a, b: a * b,
    lambda a, b: a - a * b,
    lambda a, b: a,
    lambda a, b: b - a * b,
    lambda a, b: b,
    lambda a, b: a + b - 2 * a * b,
    lambda a, b: a + b - a * b,
    lambda a, b: 1 - (a + b - a * b),
    lambda a, b: 1 - (a + b - 2 * a * b),
    lambda a, b: 1 - b,
    lambda a, b: 1 - b + a * b,
    lambda a, b: 1 - a,
    lambda a, b: 1 - a + a * b,
    lambda a, b: 1 - a * b,
    lambda a, b: torch.ones_like(a),
)


def weighted_ops(a: torch.Tensor, b: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Sum over the 16 ops of probs[..., i] * op_i(a, b); `probs` is (gates, 16)."""
    out = torch.zeros_like(a)
    for i, op in enumerate(OPS):
        out = out + probs[..., i] * op(a, b)
    return out


def reference_layer(
    x: torch.Tensor, idx_a: torch.Tensor, idx_b: torch.Tensor, probs: torch.Tensor
) -> torch.Tensor:
    """One logic layer on batch-major input `(batch, in_dim)` -> `(batch, gates)`."""
    return weighted_ops(x[..., idx_a], x[..., idx_b], probs)


class ReferenceNet(torch.nn.Module):
    """A logic gate network computed the reference way, sharing another net's parameters.

    Built from a `trainer.model.LogicNet` so that both compute the same function and the
    benchmark compares like with like.
    """

    def __init__(
        self,
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        logits: list[torch.Tensor],
        grouping: int,
        tau: float,
    ) -> None:
        super().__init__()
        self.indices = indices
        self.logits = torch.nn.ParameterList(
            [torch.nn.Parameter(z.detach().clone()) for z in logits]
        )
        self.grouping = grouping
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for (ia, ib), z in zip(self.indices, self.logits, strict=True):
            x = reference_layer(x, ia, ib, torch.softmax(z, dim=-1))
        return x.reshape(x.shape[0], self.grouping, -1).sum(-1) / self.tau


class ReferenceConvNet(torch.nn.Module):
    """A convolutional logic network (trainer.conv.ConvLogicNet) computed the plain-torch
    way, batch-major, sharing its connections and copying its logits: patches by
    `F.unfold`, each tree level as the 16-op weighted sum over (batch, channel, gate,
    position), OR pooling by `F.max_pool2d`, then the dense layers as ReferenceNet's."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model_spec, self.image = model.spec, model.image
        self.fields = [
            (c.leaves[..., 0] * c.spec.kernel + c.leaves[..., 1]) * c.spec.kernel + c.leaves[..., 2]
            for c in model.convs
        ]
        self.blocks = [c.block for c in model.convs]
        self.tree_logits = torch.nn.ParameterList(
            [
                torch.nn.Parameter(level.logits.detach().clone())
                for c in model.convs
                for level in c.levels
            ]
        )
        self.dense = ReferenceNet(
            [(layer.idx_a, layer.idx_b) for layer in model.layers],
            [layer.logits for layer in model.layers],
            model.group_sum.k,
            model.group_sum.tau,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, img = self.model_spec, self.image
        h = x.view(-1, img.height, img.width, img.channels).permute(0, 3, 1, 2)
        logits = iter(self.tree_logits)
        for field, block in zip(self.fields, self.blocks, strict=True):
            cols = torch.nn.functional.unfold(
                h, s.kernel, padding=s.padding, stride=s.stride
            )  # (batch, in_c * k * k, positions)
            v = cols[:, field.reshape(-1)].view(x.shape[0], block.channels, s.leaves, -1)
            for _ in range(s.depth):
                probs = torch.softmax(next(logits), -1).view(block.channels, -1, 1, 16)
                v = weighted_ops(v[:, :, 0::2], v[:, :, 1::2], probs)
            h = v.view(x.shape[0], block.channels, block.conv_h, block.conv_w)
            if s.pool > 1:
                h = torch.nn.functional.max_pool2d(h, s.pool)
        return self.dense(h.reshape(x.shape[0], -1))

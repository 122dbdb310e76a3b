"""Convolutional logic gate networks (LogicTreeNet, after Petersen et al. 2024): tree
convolutions, logical-OR pooling, then the dense logic layers and GroupSum.

A tree convolution is the dense logic layer applied to gathered patches: one index gather
maps the block's input `(in_dim, batch)` to the trees' leaves `(channels * leaves,
positions * batch)`, and each tree level is a `trainer.layer.LogicLayer` whose fixed
connections pair neighbouring rows. Positions ride in the batch axis, so every position
shares a tree's connections and gate parameters, and every backend of the dense layer (the
C++ kernel, the torch path, difflogic's CUDA kernel) runs the convolution unchanged.

Activations are feature-major as in the dense network; a block's output is laid out
channel, row, column (CHW). The data set's bits arrive height, width, channel (HWC,
trainer.data.catalog.ImageShape); the first block gathers from that layout.

`discrete_layers` unrolls the trained network into the plain layered form of network.json
(trainer.export): every tree at every position, each OR pool as a tree of OR gates, and a
gate that reads zero padding rewritten as a gate of its other input (or a constant), so the
numpy evaluator and the circuit compiler need nothing conv-specific.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.convspec import BlockShape, ConvSpec, block_shapes, discrete_widths, parse_channels
from trainer.data.catalog import ImageShape
from trainer.errors import RunConfigError
from trainer.layer import GroupSum, LogicLayer, resolve_backend
from trainer.parametrizations import Parametrization


def conv_arguments(args: Any, data: Any) -> dict[str, Any]:
    """build_model's architecture arguments from the trainer's parsed flags and its data
    set; raises RunConfigError where a conv run's data set has no image shape."""
    if getattr(args, "architecture", "dense") != "conv":
        return {}
    if data.image is None:
        raise RunConfigError(f"--architecture conv needs an image data set; {data.name} is not one")
    spec = ConvSpec(
        parse_channels(args.conv_channels),
        kernel=args.kernel_size,
        stride=args.conv_stride,
        padding=args.conv_padding,
        depth=args.tree_depth,
        pool=args.pool_size,
    )
    return {"architecture": "conv", "image": data.image, "conv": spec}


OR_GATE = 7  # "A OR B" (trainer.gates)
PASS_A = 3  # "A"


def draw_leaves(channels: int, leaves: int, kernel: int, in_c: int) -> torch.Tensor:
    """(channels, leaves, 3) of (input channel, dy, dx): each tree's inputs, drawn without
    repetition from its kernel x kernel x in_c receptive field, from torch's generator."""
    field = kernel * kernel * in_c
    picks = torch.stack([torch.randperm(field)[:leaves] for _ in range(channels)])
    return torch.stack([picks // (kernel * kernel), picks // kernel % kernel, picks % kernel], -1)


def leaf_index(
    leaves: torch.Tensor, block: BlockShape, spec: ConvSpec, strides: tuple[int, int, int]
) -> torch.Tensor:
    """(channels * leaves, positions) input rows each tree leaf reads at each position;
    a leaf in the zero padding reads row in_dim (the zero row the forward appends)."""
    pad_row = block.in_h * block.in_w * block.in_c
    oy = torch.arange(block.conv_h).repeat_interleave(block.conv_w)
    ox = torch.arange(block.conv_w).repeat(block.conv_h)
    c, dy, dx = (leaves[..., i].reshape(-1, 1) for i in range(3))
    iy = oy * spec.stride + dy - spec.padding
    ix = ox * spec.stride + dx - spec.padding
    inside = (iy >= 0) & (iy < block.in_h) & (ix >= 0) & (ix < block.in_w)
    sc, sy, sx = strides
    flat = c * sc + iy.clamp(0, block.in_h - 1) * sy + ix.clamp(0, block.in_w - 1) * sx
    return torch.where(inside, flat, torch.full_like(flat, pad_row)).to(torch.int64)


class TreeConv(torch.nn.Module):
    """One block's tree convolution: (in_h * in_w * in_c, batch) -> (channels * positions,
    batch), output in CHW order."""

    leaves: torch.Tensor
    index: torch.Tensor

    def __init__(
        self,
        block: BlockShape,
        spec: ConvSpec,
        strides: tuple[int, int, int],
        parametrization: Parametrization,
        *,
        residual: bool,
        backend: str,
    ) -> None:
        super().__init__()
        self.block, self.spec, self.strides = block, spec, strides
        self.in_dim = block.in_h * block.in_w * block.in_c
        leaves = draw_leaves(block.channels, spec.leaves, spec.kernel, block.in_c)
        self.register_buffer("leaves", leaves)
        self.register_buffer("index", leaf_index(leaves, block, spec, strides).reshape(-1))
        levels = []
        rows = block.channels * spec.leaves
        for _ in range(spec.depth):
            pairs = torch.arange(0, rows, 2)
            levels.append(
                LogicLayer(
                    rows,
                    rows // 2,
                    parametrization,
                    residual=residual,
                    backend=backend,
                    connections=(pairs, pairs + 1),
                )
            )
            rows //= 2
        self.levels = torch.nn.ModuleList(levels)

    def extra_repr(self) -> str:
        b, s = self.block, self.spec
        return (
            f"{b.in_c}x{b.in_h}x{b.in_w} -> {b.channels}x{b.conv_h}x{b.conv_w}, "
            f"kernel={s.kernel}, stride={s.stride}, padding={s.padding}, depth={s.depth}"
        )

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The leaves' values (channels * leaves, positions * batch), zero padding included."""
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])])
        rows = self.block.channels * self.spec.leaves
        return padded.index_select(0, self.index).view(rows, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patches(x)
        for level in self.levels:
            h = level(h)
        return h.view(self.block.channels * self.block.positions, x.shape[1])


class OrPool(torch.nn.Module):
    """Logical-OR pooling over pool x pool windows, stride pool, relaxed as the maximum (the
    max t-conorm, which is OR on bits); rows and columns that do not fill a window are
    dropped, as torch's max_pool2d does."""

    def __init__(self, block: BlockShape, pool: int) -> None:
        super().__init__()
        self.block, self.pool = block, pool

    def extra_repr(self) -> str:
        return f"{self.pool}x{self.pool}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k = self.block, self.pool
        v = x.view(b.channels, b.conv_h, b.conv_w, -1)[:, : b.out_h * k, : b.out_w * k]
        v = v.reshape(b.channels, b.out_h, k, b.out_w, k, -1).amax(dim=(2, 4))
        return v.reshape(b.outputs, x.shape[1])


class ConvLogicNet(torch.nn.Module):
    """Maps (batch, H * W * C) bits in HWC order to (batch, grouping) class scores.

    `widths` are the gates of each layer of the unrolled network (`discrete_layers`), so
    `sum(widths)` is the gate count the circuit starts from, as for the dense network.
    """

    def __init__(
        self,
        image: ImageShape,
        spec: ConvSpec,
        dense_widths: list[int],
        *,
        grouping: int,
        group_sum_tau: float,
        parametrization: Parametrization,
        residual_layers: int,
        backend: str,
    ) -> None:
        super().__init__()
        self.image, self.spec, self.backend = image, spec, backend
        self.in_dim = image.inputs
        blocks = block_shapes(image, spec)
        convs, pools = [], []
        strides = (1, image.width * image.channels, image.channels)  # HWC
        for i, block in enumerate(blocks):
            convs.append(
                TreeConv(
                    block,
                    spec,
                    strides,
                    parametrization,
                    residual=i < residual_layers,
                    backend=backend,
                )
            )
            pools.append(OrPool(block, spec.pool))
            strides = (block.out_h * block.out_w, block.out_w, 1)  # CHW from here on
        self.convs = torch.nn.ModuleList(convs)
        self.pools = torch.nn.ModuleList(pools)
        dims = [blocks[-1].outputs, *dense_widths]
        self.layers = torch.nn.ModuleList(
            LogicLayer(
                dims[i],
                dims[i + 1],
                parametrization,
                residual=len(blocks) + i < residual_layers,
                backend=backend,
            )
            for i in range(len(dense_widths))
        )
        self.group_sum = GroupSum(grouping, group_sum_tau)
        self.widths = discrete_widths(image, spec, dense_widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected input (batch, {self.in_dim}), got {tuple(x.shape)}")
        h = x.t().contiguous()
        for conv, pool in zip(self.convs, self.pools, strict=True):
            h = conv(h)
            if self.spec.pool > 1:
                h = pool(h)
        for layer in self.layers:
            h = layer(h)
        return self.group_sum(h)

    def backend_on(self, device: torch.device | str) -> str:
        return resolve_backend(self.backend, torch.device(device))

    def set_relaxed_eval(self, relaxed: bool) -> None:
        for module in self.modules():
            if isinstance(module, LogicLayer):
                module.relaxed_eval = relaxed

    def architecture(self) -> dict[str, Any]:
        """What network.json records about the conv part (informational: the layers are
        unrolled, so no reader needs it)."""
        s = self.spec
        return {
            "type": "conv",
            "image": [self.image.height, self.image.width, self.image.channels],
            "channels": list(s.channels),
            "kernel": s.kernel,
            "stride": s.stride,
            "padding": s.padding,
            "treeDepth": s.depth,
            "pool": s.pool,
        }

    @torch.no_grad()
    def discrete_layers(self) -> list[dict[str, Any]]:
        """The argmax network unrolled into layers of two-input gates (network.json)."""
        out: list[dict[str, Any]] = []
        width = self.in_dim
        for conv, pool in zip(self.convs, self.pools, strict=True):
            assert isinstance(conv, TreeConv) and isinstance(pool, OrPool)
            for layer in _tree_layers(conv):
                out.append({"in_dim": width, **layer})
                width = len(layer["op"])
            if self.spec.pool > 1:
                for layer in _pool_layers(pool.block, self.spec.pool):
                    out.append({"in_dim": width, **layer})
                    width = len(layer["op"])
        for dense in self.layers:
            assert isinstance(dense, LogicLayer)
            out.append(
                {
                    "in_dim": width,
                    "gates": dense.out_dim,
                    "a": dense.idx_a.cpu().tolist(),
                    "b": dense.idx_b.cpu().tolist(),
                    "op": dense.gates().cpu().tolist(),
                }
            )
            width = dense.out_dim
        return out


def _bit(op: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return (op >> (3 - (2 * a + b))) & 1


def _gate(
    b00: torch.Tensor, b01: torch.Tensor, b10: torch.Tensor, b11: torch.Tensor
) -> torch.Tensor:
    return (b00 << 3) | (b01 << 2) | (b10 << 1) | b11


def _layer(a: torch.Tensor, b: torch.Tensor, op: torch.Tensor) -> dict[str, Any]:
    return {
        "gates": a.numel(),
        "a": a.reshape(-1).tolist(),
        "b": b.reshape(-1).tolist(),
        "op": op.reshape(-1).tolist(),
    }


def _tree_layers(conv: TreeConv) -> list[dict[str, Any]]:
    positions = conv.block.positions
    index = conv.index.view(-1, positions).cpu()
    layers = []
    for level_no, level in enumerate(conv.levels):
        assert isinstance(level, LogicLayer)
        op = level.gates().cpu()[:, None].expand(-1, positions).clone()
        if level_no == 0:
            a, b = index[0::2].clone(), index[1::2].clone()
            pad = conv.in_dim
            pa, pb = a == pad, b == pad
            # f(a, 0) as a gate of a alone; f(0, b) as a gate of b alone; f(0, 0) constant.
            only_a = ~pa & pb
            op[only_a] = _gate(*(_bit(op, x, 0) for x in (0, 0, 1, 1)))[only_a]
            b[only_a] = a[only_a]
            only_b = pa & ~pb
            op[only_b] = _gate(*(_bit(op, 0, x) for x in (0, 0, 1, 1)))[only_b]
            a[only_b] = b[only_b]
            both = pa & pb
            op[both] = (_bit(op, 0, 0) * 15)[both]
            a[both] = 0
            b[both] = 0
        else:
            rows = op.shape[0]
            p = torch.arange(positions)
            n = torch.arange(rows)[:, None]
            a, b = 2 * n * positions + p, (2 * n + 1) * positions + p
        layers.append(_layer(a, b, op))
    return layers


def _pool_layers(block: BlockShape, k: int) -> list[dict[str, Any]]:
    """OR trees over each window; the last level's outputs are in CHW order."""
    c = torch.arange(block.channels)[:, None, None, None, None]
    oy = torch.arange(block.out_h)[None, :, None, None, None]
    ox = torch.arange(block.out_w)[None, None, :, None, None]
    i = torch.arange(k)[None, None, None, :, None]
    j = torch.arange(k)[None, None, None, None, :]
    window = (c * block.conv_h + oy * k + i) * block.conv_w + ox * k + j
    current = window.reshape(block.outputs, k * k)
    layers = []
    while current.shape[1] > 1:
        m = current.shape[1]
        half = -(-m // 2)
        a = current[:, 0::2]
        b = current[:, 1::2]
        op = torch.full((block.outputs, half), OR_GATE, dtype=torch.int64)
        if m % 2:
            b = torch.cat([b, a[:, -1:]], 1)
            op[:, -1] = PASS_A
        layers.append(_layer(a, b, op))
        current = torch.arange(block.outputs * half).view(block.outputs, half)
    return layers

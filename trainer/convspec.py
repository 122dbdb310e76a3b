"""The shape of a convolutional logic network, torch-free: the API validates conv options
with it (trainer.options' rules) and estimates their memory (trainer.memory); the trainer
builds the network from it (trainer.conv).

A block is a tree convolution (each of `channels` output channels is a binary tree of
2**depth - 1 gates over 2**depth inputs from a kernel x kernel window of all input
channels, `stride` and zero `padding`), then logical-OR pooling over pool x pool windows
with stride pool (pool 1: none). See docs/trainer.md, "Convolutional networks".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trainer.data.catalog import IMAGE_SHAPES, ImageShape

CHANNELS_PATTERN = r"^[1-9][0-9]{0,3}(,[1-9][0-9]{0,3}){0,7}$"
# A block's unrolled gates (trees at every position and the OR pooling) at most: the
# compiled circuit and network.json hold every one of them.
MAX_BLOCK_GATES = 20_000_000


def parse_channels(text: str) -> tuple[int, ...]:
    """`"16,32"` -> (16, 32); raises ValueError for anything else."""
    if not re.fullmatch(CHANNELS_PATTERN, text):
        raise ValueError(f"conv channels {text!r} are not a comma-separated list of 1..9999")
    return tuple(int(c) for c in text.split(","))


@dataclass(frozen=True)
class ConvSpec:
    channels: tuple[int, ...]
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    depth: int = 2
    pool: int = 2

    @classmethod
    def from_options(cls, v: Mapping[str, Any]) -> ConvSpec:
        """From training options by their API names (convChannels, kernelSize, ...)."""
        return cls(
            parse_channels(str(v["convChannels"])),
            kernel=int(v["kernelSize"]),
            stride=int(v["convStride"]),
            padding=int(v["convPadding"]),
            depth=int(v["treeDepth"]),
            pool=int(v["poolSize"]),
        )

    @property
    def leaves(self) -> int:
        return 1 << self.depth


def or_tree_widths(inputs: int) -> list[int]:
    """Gates per level of the OR tree over `inputs` values: pairs are ORed, an odd one out is
    passed through by a one-input gate, until one value is left ([2, 1] for 2x2 pooling)."""
    widths = []
    while inputs > 1:
        inputs = -(-inputs // 2)
        widths.append(inputs)
    return widths


@dataclass(frozen=True)
class BlockShape:
    in_h: int
    in_w: int
    in_c: int
    conv_h: int  # the tree convolution's output size, before pooling
    conv_w: int
    channels: int
    out_h: int  # after pooling
    out_w: int

    @property
    def positions(self) -> int:
        return self.conv_h * self.conv_w

    @property
    def outputs(self) -> int:
        return self.channels * self.out_h * self.out_w


def conv_size(size: int, spec: ConvSpec) -> int:
    return (size + 2 * spec.padding - spec.kernel) // spec.stride + 1


def block_shapes(image: ImageShape, spec: ConvSpec) -> list[BlockShape]:
    """Every block's sizes; raises ValueError where one does not fit (see `problems`)."""
    found = list(_walk(image, spec))
    for item in found:
        if isinstance(item, tuple):
            raise ValueError(item[1])
    return [b for b in found if isinstance(b, BlockShape)]


def _walk(image: ImageShape, spec: ConvSpec) -> Iterator[BlockShape | tuple[str, str]]:
    h, w, c = image.height, image.width, image.channels
    for i, channels in enumerate(spec.channels, start=1):
        if spec.kernel > min(h, w) + 2 * spec.padding:
            yield (
                "kernelSize",
                f"block {i}'s kernel {spec.kernel}x{spec.kernel} is larger than its input "
                f"{h}x{w} with padding {spec.padding}",
            )
            return
        if spec.leaves > spec.kernel * spec.kernel * c:
            yield (
                "treeDepth",
                f"a depth-{spec.depth} tree reads {spec.leaves} inputs, but block {i}'s "
                f"receptive field ({spec.kernel}x{spec.kernel} of {c} channels) has only "
                f"{spec.kernel * spec.kernel * c}",
            )
            return
        ch, cw = conv_size(h, spec), conv_size(w, spec)
        oh, ow = ch // spec.pool, cw // spec.pool
        if oh < 1 or ow < 1:
            yield (
                "poolSize",
                f"block {i} pools its {ch}x{cw} output with {spec.pool}x{spec.pool} windows: "
                "below 1x1",
            )
            return
        block = BlockShape(h, w, c, ch, cw, channels, oh, ow)
        if block_gates(block, spec) > MAX_BLOCK_GATES:
            yield (
                "convChannels",
                f"block {i} ({channels} channels at {ch}x{cw} positions) unrolls to "
                f"{block_gates(block, spec)} gates, more than {MAX_BLOCK_GATES}",
            )
            return
        yield block
        h, w, c = oh, ow, channels


def problems(image: ImageShape | None, dataset: str, spec: ConvSpec) -> list[tuple[str, str]]:
    """(field, message) for each reason these conv options cannot run on `dataset`."""
    if image is None:
        return [
            (
                "architecture",
                f"conv needs an image data set ({', '.join(IMAGE_SHAPES)}); {dataset} has no "
                "image shape",
            )
        ]
    return [item for item in _walk(image, spec) if isinstance(item, tuple)]


def tree_widths(block: BlockShape, spec: ConvSpec) -> list[int]:
    """Gates of each tree level, unrolled over positions: leaves / 2, / 4, ..., 1 per channel."""
    return [
        block.channels * (spec.leaves >> level) * block.positions
        for level in range(1, spec.depth + 1)
    ]


def pool_widths(block: BlockShape, spec: ConvSpec) -> list[int]:
    return [block.outputs * w for w in or_tree_widths(spec.pool * spec.pool)]


def block_gates(block: BlockShape, spec: ConvSpec) -> int:
    return sum(tree_widths(block, spec)) + sum(pool_widths(block, spec))


def discrete_widths(image: ImageShape, spec: ConvSpec, dense: list[int]) -> list[int]:
    """The gates of each layer of the exported (unrolled) network, first to last."""
    widths: list[int] = []
    for block in block_shapes(image, spec):
        widths += tree_widths(block, spec) + pool_widths(block, spec)
    return widths + dense

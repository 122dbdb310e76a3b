"""The convolutional logic network (trainer.conv) against straightforward references:
patches gathered pixel by pixel, trees evaluated gate by gate with the 16 relaxed ops
(trainer.reference), OR pooling as a max over each window written out; translation
equivariance; the unrolled export against the network itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.conv import ConvLogicNet, OrPool, TreeConv
from trainer.convspec import ConvSpec, block_shapes
from trainer.data.catalog import ImageShape
from trainer.export import DiscreteLayer, DiscreteNetwork
from trainer.layer import LogicLayer
from trainer.model import build_model
from trainer.parametrizations import GATE_OPTIMIZERS, Parametrization
from trainer.reference import weighted_ops

# Both CPU paths; the C++ kernel builds wherever the tests run (test_trainer_layer needs it).
BACKENDS = ["torch", "cpp"]


def tree_conv(
    image: ImageShape, spec: ConvSpec, optimizer: str, backend: str, *, residual: bool = False
) -> TreeConv:
    """A residual tree starts strongly (residualPassProb 0.99): a wire everywhere."""
    block = block_shapes(image, spec)[0]
    strides = (1, image.width * image.channels, image.channels)  # HWC, as the data
    param = Parametrization(optimizer, 0.5, "soft", 0.99)
    return TreeConv(block, spec, strides, param, residual=residual, backend=backend)


def reference_tree_conv(
    x: torch.Tensor,
    image: ImageShape,
    spec: ConvSpec,
    leaves: torch.Tensor,
    probs: list[torch.Tensor],
) -> torch.Tensor:
    """(batch, H*W*C) HWC -> (batch, channels, out_h, out_w), one position at a time."""
    img = x.view(-1, image.height, image.width, image.channels)
    out_h = (image.height + 2 * spec.padding - spec.kernel) // spec.stride + 1
    out_w = (image.width + 2 * spec.padding - spec.kernel) // spec.stride + 1
    channels = leaves.shape[0]
    rows = []
    for o in range(channels):
        plane = []
        for oy in range(out_h):
            line = []
            for ox in range(out_w):
                values = []
                for c, dy, dx in leaves[o].tolist():
                    iy = oy * spec.stride + dy - spec.padding
                    ix = ox * spec.stride + dx - spec.padding
                    if 0 <= iy < image.height and 0 <= ix < image.width:
                        values.append(img[:, iy, ix, c])
                    else:
                        values.append(torch.zeros(img.shape[0], dtype=x.dtype))
                for level, p in enumerate(probs):
                    per_tree = len(values) // 2
                    values = [
                        weighted_ops(values[2 * g], values[2 * g + 1], p[o * per_tree + g])
                        for g in range(per_tree)
                    ]
                    del level
                line.append(values[0])
            plane.append(torch.stack(line, -1))
        rows.append(torch.stack(plane, -2))
    return torch.stack(rows, 1)


SPECS = [
    ConvSpec((3,), kernel=3, stride=1, padding=1, depth=2, pool=1),
    ConvSpec((2,), kernel=2, stride=2, padding=1, depth=3, pool=1),
]


@pytest.mark.parametrize("optimizer", GATE_OPTIMIZERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tree_convolution_forward_and_backward_match_the_reference(
    optimizer: str, backend: str
) -> None:
    torch.manual_seed(1)
    image = ImageShape(5, 6, 2)
    for spec in SPECS:
        layer = tree_conv(image, spec, optimizer, backend)
        for level in layer.levels:
            assert isinstance(level, LogicLayer)
            level.relaxed_eval = True  # noise-free probabilities: both sides see the same
        layer.eval()
        x = torch.rand(4, image.inputs, requires_grad=True)
        ours = layer(x.t().contiguous())
        block = layer.block
        ours = ours.view(block.channels, block.conv_h, block.conv_w, 4).permute(3, 0, 1, 2)
        upstream = torch.randn_like(ours)
        (ours * upstream).sum().backward()
        got_x = x.grad.clone()
        got_logits = [lv.logits.grad.clone() for lv in layer.levels]  # type: ignore[union-attr]

        x.grad = None
        logits = [lv.logits.detach().clone().requires_grad_() for lv in layer.levels]  # type: ignore[union-attr]
        param = Parametrization(optimizer, 0.5)
        probs = [param.probs(z, noise=False) for z in logits]
        expected = reference_tree_conv(x, image, spec, layer.leaves, probs)
        (expected * upstream).sum().backward()
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got_x, x.grad, atol=1e-5, rtol=1e-4)
        for got, z in zip(got_logits, logits, strict=True):
            torch.testing.assert_close(got, z.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("optimizer", GATE_OPTIMIZERS)
def test_discrete_tree_convolution_is_the_boolean_trees(optimizer: str) -> None:
    """Eval mode (argmax gates) on bits is each tree's Boolean function at each position."""
    torch.manual_seed(2)
    image = ImageShape(6, 6, 3)
    spec = ConvSpec((4,), kernel=3, padding=1, depth=2, pool=1)
    layer = tree_conv(image, spec, optimizer, BACKENDS[-1]).eval()
    x = (torch.rand(5, image.inputs) > 0.5).float()
    ours = layer(x.t().contiguous()).view(4, 6, 6, 5).permute(3, 0, 1, 2)
    onehot = [
        torch.nn.functional.one_hot(lv.gates(), 16).float()  # type: ignore[union-attr, operator]
        for lv in layer.levels
    ]
    assert torch.equal(ours, reference_tree_conv(x, image, spec, layer.leaves, onehot))


def reference_or_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """(batch, C, H, W) -> (batch, C, H // k, W // k): the max of each window, written out."""
    b, c, h, w = x.shape
    out = torch.empty(b, c, h // k, w // k, dtype=x.dtype)
    for y in range(h // k):
        for xx in range(w // k):
            window = x[:, :, y * k : (y + 1) * k, xx * k : (xx + 1) * k]
            out[:, :, y, xx] = window.reshape(b, c, -1).max(-1).values
    return out


@pytest.mark.parametrize("k", [2, 3])
def test_or_pooling_matches_the_reference(k: int) -> None:
    torch.manual_seed(3)
    block = block_shapes(ImageShape(7, 8, 2), ConvSpec((3,), kernel=3, padding=1, pool=k))[0]
    pool = OrPool(block, k)
    x = torch.rand(5, 3, 7, 8, requires_grad=True)
    ours = pool(x.permute(1, 2, 3, 0).reshape(-1, 5)).view(3, 7 // k, 8 // k, 5).permute(3, 0, 1, 2)
    upstream = torch.randn_like(ours)
    (ours * upstream).sum().backward()
    got = x.grad.clone()
    x.grad = None
    expected = reference_or_pool(x, k)
    (expected * upstream).sum().backward()
    assert torch.equal(ours, expected)
    assert torch.equal(got, x.grad)
    bits = (torch.rand(5, 3, 7, 8) > 0.7).float()
    pooled = pool(bits.permute(1, 2, 3, 0).reshape(-1, 5)).view(3, 7 // k, 8 // k, 5)
    ors = reference_or_pool(bits.bool().float(), k).permute(1, 2, 3, 0)
    assert torch.equal(pooled, ors)  # on bits, the max is the OR


@pytest.mark.parametrize("discrete", [False, True])
def test_a_shifted_image_gives_the_shifted_output(discrete: bool) -> None:
    torch.manual_seed(4)
    image = ImageShape(10, 10, 2)
    layer = tree_conv(
        image, ConvSpec((5,), kernel=3, padding=1, depth=2, pool=1), "softmax", "torch"
    )
    layer.eval()
    for level in layer.levels:
        level.relaxed_eval = not discrete  # type: ignore[union-attr, assignment]
    img = torch.zeros(3, 10, 10, 2)
    content = torch.rand(3, 5, 5, 2)
    img[:, 2:7, 1:6] = (content > 0.5).float() if discrete else content
    shifted = torch.roll(img, shifts=(2, 3), dims=(1, 2))  # content stays inside the image

    def run(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return layer(t.reshape(3, -1).t().contiguous()).view(5, 10, 10, 3)

    out, out_shifted = run(img), run(shifted)
    torch.testing.assert_close(out_shifted[:, 2:, 3:], out[:, :-2, :-3], atol=1e-6, rtol=0)
    assert not torch.allclose(out_shifted, out)


def discrete_of(model: ConvLogicNet) -> DiscreteNetwork:
    layers = [
        DiscreteLayer(np.asarray(d["a"]), np.asarray(d["b"]), np.asarray(d["op"], np.uint8))
        for d in model.discrete_layers()
    ]
    return DiscreteNetwork(model.in_dim, model.group_sum.k, layers, {})


@pytest.mark.parametrize(
    "spec",
    [
        ConvSpec((6, 8)),
        ConvSpec((5,), kernel=3, stride=2, padding=2, depth=3, pool=3),
        ConvSpec((4, 4), padding=0, pool=1),
    ],
)
def test_the_unrolled_network_predicts_as_the_model(spec: ConvSpec) -> None:
    """network.json's layers (padding folded into gates, OR pools as OR gates) compute the
    model's discrete scores exactly, and have `widths` gates per layer."""
    torch.manual_seed(5)
    model = build_model(
        256, gates=40, network_layers=2, grouping=10, group_sum_tau=1.0,
        gate_optimizer="softmax", architecture="conv", image=ImageShape(8, 8, 4), conv=spec,
        backend=BACKENDS[-1],
    ).eval()  # fmt: skip
    x = (torch.rand(64, 256) > 0.5).float()
    with torch.no_grad():
        scores = model(x).numpy()
    network = discrete_of(model)
    assert np.array_equal(network.scores(x.numpy().astype(np.uint8)), scores)
    assert [len(layer.op) for layer in network.layers] == model.widths


def test_residual_initialisation_passes_the_first_leaf_through() -> None:
    torch.manual_seed(6)
    image = ImageShape(6, 6, 2)
    layer = tree_conv(image, ConvSpec((3,), pool=1), "softmax", "torch", residual=True).eval()
    x = (torch.rand(4, image.inputs) > 0.5).float().t().contiguous()
    first_leaf = layer.patches(x).view(3, 4, -1)[:, 0]
    assert torch.equal(layer(x).view(3, -1), first_leaf)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_whole_network_matches_the_plain_torch_reference(backend: str) -> None:
    """The benchmark's baseline (F.unfold, 16-op sums, F.max_pool2d) computes the same
    scores and gradients as the network, for softmax gates."""
    from trainer.reference import ReferenceConvNet

    torch.manual_seed(7)
    model = build_model(
        256, gates=40, network_layers=2, grouping=10, group_sum_tau=3.0,
        gate_optimizer="softmax", architecture="conv", image=ImageShape(8, 8, 4),
        conv=ConvSpec((6, 8), stride=1, padding=1, depth=2, pool=2), backend=backend,
    ).train()  # fmt: skip
    reference = ReferenceConvNet(model)
    x = torch.rand(9, 256)
    ours, theirs = model(x), reference(x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    got = [lv.logits.grad for c in model.convs for lv in c.levels]
    for g, z in zip(got, reference.tree_logits, strict=True):
        torch.testing.assert_close(g, z.grad, atol=1e-5, rtol=1e-4)

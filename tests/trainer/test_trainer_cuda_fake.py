"""The model on `cuda` without a GPU: torch's FakeTensorMode runs every op on fake tensors
that carry a device, and raises where an op mixes devices. The model moved to `cuda`, its
training forward, its relaxed and discrete evaluation, and the layers' hand-written
backwards (called directly: autograd's engine itself needs a real device) must all keep to
`cuda`: no tensor made on the CPU by the way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from difflogic_standin import install
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode

from trainer.kernels import difflogic_cuda as dl
from trainer.layer import LogicLayer, TorchLogicFunction
from trainer.model import LogicNet, build_model, relaxed_evaluation
from trainer.parametrizations import GATE_OPTIMIZERS

CUDA = torch.device("cuda", 0)


@pytest.fixture
def fake_cuda() -> Iterator[FakeTensorMode]:
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


class Ctx:
    """What autograd hands a Function's forward and backward, for calling them directly."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple[torch.Tensor, ...] = ()

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors


def _net(gate_optimizer: str, backend: str = "auto") -> LogicNet:
    torch.manual_seed(0)
    return build_model(
        20, gates=40, network_layers=3, grouping=4, group_sum_tau=2.0,
        gate_optimizer=gate_optimizer, residual_layers=1, backend=backend,
    )  # fmt: skip


def _on_cuda(*tensors: Any) -> None:
    for t in tensors:
        assert t.device == CUDA, t.device


def test_fake_mode_does_catch_a_device_mismatch(fake_cuda: FakeTensorMode) -> None:
    """The guard the tests below rely on."""
    with pytest.raises(FakeTensorDeviceMismatchError):
        torch.rand(3, 4, device="cuda") + torch.rand(3, 4)


@pytest.mark.parametrize("gate_optimizer", GATE_OPTIMIZERS)
def test_model_forward_and_evaluation_stay_on_cuda(gate_optimizer: str) -> None:
    net = _net(gate_optimizer)
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = net.to("cuda")
        _on_cuda(*net.parameters(), *net.buffers())
        x = torch.rand(9, 20, device="cuda")
        net.train()
        scores = net(x)
        _on_cuda(scores)
        assert scores.shape == (9, 4)
        torch.nn.functional.cross_entropy(scores, torch.randint(0, 4, (9,), device="cuda"))
        with relaxed_evaluation(net), torch.no_grad():
            _on_cuda(net(x))
        net.eval()
        with torch.no_grad():
            _on_cuda(net(x), (net(x).argmax(-1) == torch.zeros(9, device="cuda")).sum())


def test_the_torch_backward_stays_on_cuda() -> None:
    net = _net("sparsemax_noise", "torch")
    with FakeTensorMode(allow_non_fake_inputs=True):
        _torch_backward(net.to("cuda").layers[1])


def _torch_backward(layer: torch.nn.Module) -> None:
    assert isinstance(layer, LogicLayer)
    x = torch.rand(40, 9, device="cuda")
    coef = layer.probs() @ layer.coeffs
    ctx = Ctx((True, True, False, False))
    y = TorchLogicFunction.forward(ctx, x, coef, layer.idx_a, layer.idx_b)
    grad_x, grad_coef, _, _ = TorchLogicFunction.backward(ctx, torch.randn_like(y))
    _on_cuda(y, grad_x, grad_coef)
    assert grad_x.shape == x.shape and grad_coef.shape == coef.shape


def test_the_difflogic_wrapper_stays_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our wrapper's part of the difflogic backend (the reverse index, the probabilities'
    dtype and layout, the backward's arguments), with the stand-in as the extension."""
    install(monkeypatch)
    net = _net("softmax", "difflogic")
    with FakeTensorMode(allow_non_fake_inputs=True):
        _difflogic_wrapper(net.to("cuda"))


def _difflogic_wrapper(net: LogicNet) -> None:
    x = torch.rand(9, 20, device="cuda")
    _on_cuda(net(x))  # the forward resolves difflogic on cuda and builds the reverse index
    layer = net.layers[1]
    assert isinstance(layer, LogicLayer) and layer._reverse is not None
    start, readers = layer._reverse
    _on_cuda(start, readers)
    h = torch.rand(40, 9, device="cuda")
    ctx = Ctx((True, True, False, False, False, False))
    y = dl.DiffLogicFunction.forward(
        ctx, h, layer.probs(), layer.idx_a, layer.idx_b, *layer._reverse
    )
    grad_x, grad_w, *_ = dl.DiffLogicFunction.backward(ctx, torch.randn_like(y))
    _on_cuda(y, grad_x, grad_w)
    assert grad_w.shape == (40, 16)

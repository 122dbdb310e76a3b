"""Our difflogic backend against our torch path, through a CPU stand-in for difflogic's
extension written from its `.cu` source (difflogic_standin): for every parametrization the
forward, the input gradient and the logit gradient agree, and so does a whole network's
Adam step. What the GPU adds (the kernels' float summation order) is left to
bench/gpu_check.sh."""

from __future__ import annotations

import copy

import pytest
import torch
from difflogic_standin import install

import trainer.layer as layer_module
from trainer import memory
from trainer.kernels import difflogic_cuda as dl
from trainer.layer import LogicLayer
from trainer.model import build_model
from trainer.parametrizations import GATE_OPTIMIZERS, Parametrization


@pytest.fixture
def difflogic_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in as difflogic_cuda, and layers allowed to take it on the CPU."""
    install(monkeypatch)
    monkeypatch.setattr(layer_module, "resolve_backend", lambda backend, device: backend)


def _layer_pass(
    layer: LogicLayer, backend: str, x: torch.Tensor, grad_y: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    layer.backend = backend
    layer.logits.grad = None
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same noise draws for both backends
    y = layer(xg)
    y.backward(grad_y)
    assert xg.grad is not None
    grad = layer.logits.grad  # None in eval mode: the argmax gates take no gradient
    return y.detach(), xg.grad, torch.zeros(0) if grad is None else grad.clone()


@pytest.mark.usefixtures("difflogic_on_cpu")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", GATE_OPTIMIZERS)
def test_difflogic_backend_equals_the_torch_path(name: str, dtype: torch.dtype) -> None:
    assert len(GATE_OPTIMIZERS) == 9
    torch.manual_seed(1)
    layer = LogicLayer(40, 64, Parametrization(name, 0.5), residual=False).to(dtype)
    x = torch.rand(40, 33, dtype=dtype)
    grad_y = torch.randn(64, 33, dtype=dtype)
    for mode in ("train", "relaxed", "eval"):
        layer.train(mode == "train")
        layer.relaxed_eval = mode == "relaxed"
        ours = _layer_pass(layer, "difflogic", x, grad_y, seed=7)
        ref = _layer_pass(layer, "torch", x, grad_y, seed=7)
        for got, want, what in zip(ours, ref, ("forward", "input grad", "logit grad"), strict=True):
            torch.testing.assert_close(got, want, msg=lambda m, w=what, o=mode: f"{o} {w}: {m}")


@pytest.mark.usefixtures("difflogic_on_cpu")
def test_one_input_layers_stay_on_the_torch_path() -> None:
    """With in_dim == 1 both inputs of every gate are the same, and difflogic's backward_x
    counts the first input's derivative twice: the layer must not use it there."""
    torch.manual_seed(2)
    layer = LogicLayer(1, 8, Parametrization("softmax", 1.0))
    x, grad_y = torch.rand(1, 5, dtype=torch.float32), torch.randn(8, 5)
    ours = _layer_pass(layer, "difflogic", x, grad_y, seed=3)
    ref = _layer_pass(layer, "torch", x, grad_y, seed=3)
    for got, want in zip(ours, ref, strict=True):
        torch.testing.assert_close(got, want)
    # ... because the kernel itself gets that gradient wrong:
    start, readers = dl.reverse_index(layer.idx_a, layer.idx_b, 1)
    xg = x.clone().requires_grad_(True)
    probs = layer.probs().detach()
    y = dl.DiffLogicFunction.apply(xg, probs, layer.idx_a, layer.idx_b, start, readers)
    (kernel_grad,) = torch.autograd.grad(y, [xg], grad_y)
    assert not torch.allclose(kernel_grad, ours[1])


@pytest.mark.usefixtures("difflogic_on_cpu")
def test_a_whole_network_adam_step_is_the_same_on_both_backends() -> None:
    torch.manual_seed(4)
    torch_net = build_model(
        30, gates=48, network_layers=3, grouping=4, group_sum_tau=3.0,
        gate_optimizer="sparsemax_noise", residual_layers=1, backend="torch",
    ).double()  # fmt: skip
    diff_net = copy.deepcopy(torch_net)
    initial = [p.detach().clone() for p in torch_net.parameters()]
    for module in diff_net.modules():
        if isinstance(module, LogicLayer):
            module.backend = "difflogic"
    x = torch.rand(17, 30, dtype=torch.float64)
    y = torch.randint(0, 4, (17,))
    for net in (torch_net, diff_net):
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        for step in range(2):
            torch.manual_seed(10 + step)
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for (name, p), q in zip(torch_net.named_parameters(), diff_net.parameters(), strict=True):
        torch.testing.assert_close(q, p, msg=lambda m, n=name: f"{n}: {m}")
    for before, after in zip(initial, diff_net.parameters(), strict=True):
        assert not torch.allclose(before, after)  # the steps moved every layer


def test_auto_takes_the_torch_path_on_cuda_where_difflogic_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until the device check measures difflogic faster, `auto` on CUDA is the torch path,
    which is also what trainer.memory counts for `auto` there."""
    install(monkeypatch)
    cuda = torch.device("cuda")
    assert layer_module.resolve_backend("difflogic", cuda) == "difflogic"
    assert layer_module.resolve_backend("auto", cuda) == "torch"
    assert memory.resolve_backend("auto", "cuda") == "torch"
    assert memory.estimate_memory({}, "cuda").backend == "torch"

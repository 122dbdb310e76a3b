"""The straight-through estimator (`gateEstimator`) and the residual initialisation's strength
(`residualPassProb`): the forward is the discrete network exactly, the gradient the relaxed
one's, and the seed's body no longer starts (and stays) a network of wires."""

from __future__ import annotations

import pytest
import torch

from trainer import build_model
from trainer.gates import NUM_GATES, PASS_THROUGH_A
from trainer.layer import LogicLayer
from trainer.parametrizations import GATE_OPTIMIZERS, REGISTRY, Parametrization

CPU_BACKENDS = ("cpp", "torch")


def _boolean_gates(x: torch.Tensor, layer: LogicLayer, gates: torch.Tensor) -> torch.Tensor:
    """The layer's output when neuron i is the Boolean gate `gates[i]` (x is 0/1)."""
    a, b = x[layer.idx_a].long(), x[layer.idx_b].long()
    return ((gates[:, None] >> (3 - (2 * a + b))) & 1).to(x.dtype)


def _layer(name: str, estimator: str, backend: str) -> LogicLayer:
    torch.manual_seed(11)
    layer = LogicLayer(30, 50, Parametrization(name, 0.5, estimator), backend=backend)
    with torch.no_grad():
        layer.logits.mul_(2.0)  # spread the logits: a few gates well ahead, as after training
    return layer.train()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", GATE_OPTIMIZERS)
def test_straight_through_forward_is_the_discrete_network(name: str, backend: str) -> None:
    """Each neuron computes exactly its argmax gate, noise or not: a training step runs the
    network that eval mode (and the circuit) computes, bit for bit."""
    layer = _layer(name, "straight_through", backend)
    x = (torch.rand(30, 64, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    y = layer(x)
    assert torch.equal(y, _boolean_gates(x, layer, layer.logits.argmax(-1)))
    with torch.no_grad():
        assert torch.equal(y, layer.eval()(x))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", GATE_OPTIMIZERS)
def test_straight_through_gradient_is_the_relaxed_one(name: str, backend: str) -> None:
    """A layer's output is linear in its probabilities, so the gradient the relaxed map
    receives does not depend on where they are: the straight-through step passes the soft
    step's logit gradient back unchanged, on the same noise."""
    x = torch.rand(30, 64, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(50, 64, generator=torch.Generator().manual_seed(3))
    grads = {}
    for estimator in ("soft", "straight_through"):
        layer = _layer(name, estimator, backend)
        torch.manual_seed(7)
        (layer(x) * weights).sum().backward()
        assert layer.logits.grad is not None
        grads[estimator] = layer.logits.grad
    assert grads["soft"].abs().sum() > 0
    torch.testing.assert_close(grads["straight_through"], grads["soft"], rtol=1e-5, atol=1e-7)


def test_cpp_and_torch_agree_under_straight_through() -> None:
    """The two CPU backends train the same network: same output, same logit gradient."""
    x = torch.rand(30, 64, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(50, 64, generator=torch.Generator().manual_seed(3))
    out = {}
    for backend in CPU_BACKENDS:
        layer = _layer("gumbel_softmax", "straight_through", backend)
        torch.manual_seed(7)
        y = layer(x)
        (y * weights).sum().backward()
        assert layer.logits.grad is not None
        out[backend] = (y.detach(), layer.logits.grad)
    torch.testing.assert_close(out["cpp"][0], out["torch"][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["cpp"][1], out["torch"][1], rtol=1e-4, atol=1e-5)


def test_unknown_estimator_and_pass_probability_are_refused() -> None:
    with pytest.raises(ValueError, match="gate estimator"):
        Parametrization("softmax", 0.2, "hard")
    for prob in (1 / NUM_GATES, 1.0):
        with pytest.raises(ValueError, match="pass probability"):
            Parametrization("softmax", 0.2, "soft", prob)


@pytest.mark.parametrize("name", GATE_OPTIMIZERS)
def test_residual_init_gives_pass_through_its_probability(name: str) -> None:
    """With the others at their base, "A" has exactly `residualPassProb` under the map it is
    calibrated on; the others carry the random init's noise, so they are not tied, and a
    weaker start leaves more neurons with another gate ahead."""
    share = {}
    for prob in (0.3, 0.9):
        param = Parametrization(name, 0.2, "soft", prob)
        torch.manual_seed(3)
        z = param.init_logits(1024, residual=True)
        others = torch.cat([z[:, :PASS_THROUGH_A], z[:, PASS_THROUGH_A + 1 :]], dim=1)
        assert others.std() > 0.5
        lift = float(z[0, PASS_THROUGH_A])
        assert (z[:, PASS_THROUGH_A] == lift).all()
        flat = torch.full((NUM_GATES,), REGISTRY[name].residual_base)
        flat[PASS_THROUGH_A] = lift
        calibrate = Parametrization(REGISTRY[name].calibrate_as or name, 0.2)
        p = calibrate.probs(flat, noise=False)
        assert abs(float(p[PASS_THROUGH_A]) - prob) < 1e-4
        share[prob] = float((z.argmax(-1) == PASS_THROUGH_A).float().mean())
    assert share[0.3] < share[0.9]


def test_the_seed_body_trains_gates_other_than_wires() -> None:
    """The seed's body (4 residual layers of 4) on a tiny run: the old init left every
    argmax a pass-through wire; at the defaults the discrete network uses other gates and
    changes as it trains."""
    torch.manual_seed(0)
    model = build_model(
        64, gates=200, network_layers=4, grouping=10, group_sum_tau=10.0,
        gate_optimizer="sparsemax_noise", residual_layers=4, noise_temp=0.2,
        gate_estimator="straight_through",
    )  # fmt: skip
    before = [layer.gates().clone() for layer in model.layers]
    x = (torch.rand(256, 64) > 0.5).float()
    y = torch.randint(0, 10, (256,))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    after = [layer.gates() for layer in model.layers]
    wires = sum(int((g == PASS_THROUGH_A).sum()) for g in after) / sum(g.numel() for g in after)
    assert wires < 0.7
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))

"""The nine gate parametrizations: proper distributions, gradients, distinct, discrete eval."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

from trainer import build_model
from trainer.gates import NUM_GATES
from trainer.parametrizations import (
    GATE_OPTIMIZERS,
    REGISTRY,
    Parametrization,
    gate_map,
)

NOISE_FREE = ("softmax", "sparsemax", "log_softmax", "entmax", "relu_normalized", "balenas")


def test_every_registered_map_is_documented() -> None:
    """The registry is the list: docs/trainer.md's table has a row for each entry, and each
    entry says what it computes."""
    table = (Path(__file__).resolve().parents[2] / "docs" / "trainer.md").read_text()
    section = table.split("### Gate parametrizations", 1)[1].split("\n#", 1)[0]
    rows = set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))
    assert rows == set(REGISTRY)
    for entry in REGISTRY.values():
        assert entry.doc and "\n" not in entry.doc


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        gate_map("softmax", "again")(lambda z, t, noise: z)


@pytest.mark.parametrize("name", GATE_OPTIMIZERS)
@pytest.mark.parametrize("noise", [True, False])
def test_probabilities_are_a_distribution(name: str, noise: bool) -> None:
    torch.manual_seed(0)
    z = torch.randn(500, NUM_GATES) * 3
    p = Parametrization(name, 0.5).probs(z, noise=noise)
    assert p.shape == z.shape
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(500), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", GATE_OPTIMIZERS)
def test_probabilities_carry_gradients(name: str) -> None:
    torch.manual_seed(1)
    param = Parametrization(name, 0.5)
    z = param.init_logits(64, residual=False).requires_grad_(True)
    weights = torch.randn(64, NUM_GATES)
    (param.probs(z, noise=True) * weights).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # Sparse maps give no gradient outside the support, and a noisy sparse map at a low
    # temperature often has a single-gate support: a fifth of the neurons is the floor.
    assert (z.grad != 0).any(dim=-1).float().mean() > 0.2


def test_noise_free_maps_are_pairwise_distinct() -> None:
    torch.manual_seed(2)
    z = torch.randn(200, NUM_GATES).abs() + 0.01
    probs = {n: Parametrization(n).probs(z, noise=False) for n in NOISE_FREE}
    for a, b in itertools.combinations(NOISE_FREE, 2):
        assert not torch.allclose(probs[a], probs[b], atol=1e-3), (a, b)


@pytest.mark.parametrize("name", ["gumbel_softmax", "gumbel_sparsemax", "sparsemax_noise"])
def test_noisy_maps_add_noise_only_while_training(name: str) -> None:
    z = torch.randn(100, NUM_GATES)
    param = Parametrization(name, 0.5)
    assert not torch.equal(param.probs(z, noise=True), param.probs(z, noise=True))
    assert torch.equal(param.probs(z, noise=False), param.probs(z, noise=False))


def test_relu_normalized_falls_back_to_uniform_when_all_are_dead() -> None:
    z = torch.cat([-torch.rand(1, NUM_GATES), torch.zeros(1, NUM_GATES)])
    p = Parametrization("relu_normalized").probs(z, noise=False)
    torch.testing.assert_close(p, torch.full_like(p, 1 / NUM_GATES))


def test_log_softmax_is_finite_when_saturated() -> None:
    z = torch.zeros(1, NUM_GATES)
    z[0, 5] = 1e4
    p = Parametrization("log_softmax").probs(z, noise=False)
    assert torch.isfinite(p).all() and p.argmax() == 5 and p[0, 5] > 0.99


@pytest.mark.parametrize("name", GATE_OPTIMIZERS)
def test_eval_mode_is_the_discrete_argmax_network(name: str) -> None:
    torch.manual_seed(4)
    model = build_model(
        24,
        gates=40,
        network_layers=2,
        grouping=4,
        group_sum_tau=1.0,
        gate_optimizer=name,
        backend="torch",
    )
    x = (torch.rand(16, 24) > 0.5).float()
    model.eval()
    with torch.no_grad():
        scores = model(x)
        h = x.t()
        for layer in model.layers:  # hand-evaluate each neuron's argmax gate as a Boolean
            gates = layer.logits.argmax(-1)
            a, b = h[layer.idx_a].long(), h[layer.idx_b].long()
            h = ((gates[:, None] >> (3 - (2 * a + b))) & 1).float()
    assert torch.equal(scores, h.reshape(4, 10, 16).sum(1).t())
    model.train()
    with torch.no_grad():
        relaxed = model(x)
    assert not torch.equal(relaxed, scores)

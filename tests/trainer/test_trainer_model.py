"""build_model's contract (docs/design.md, "Trainer output") and the network's modes."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import needs_compiler

from trainer import build_model, relaxed_evaluation
from trainer.gates import PASS_THROUGH_A
from trainer.model import layer_widths

ARGS = dict(gates=60, network_layers=3, grouping=5, group_sum_tau=2.0, gate_optimizer="softmax")


def test_maps_batch_by_in_dim_to_batch_by_grouping() -> None:
    torch.manual_seed(0)
    model = build_model(30, **ARGS)
    assert isinstance(model, torch.nn.Module)
    x = torch.rand(7, 30)
    assert model(x).shape == (7, 5)
    model.eval()
    assert model(x).shape == (7, 5)


def test_same_seed_same_network() -> None:
    torch.manual_seed(5)
    a = build_model(30, **ARGS)
    torch.manual_seed(5)
    b = build_model(30, **ARGS)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert torch.equal(la.idx_a, lb.idx_a) and torch.equal(la.logits, lb.logits)


def test_last_layer_is_rounded_up_to_a_multiple_of_grouping() -> None:
    assert layer_widths(3332, 4, 10) == [3332, 3332, 3332, 3340]
    assert layer_widths(40, 2, 10) == [40, 40]
    model = build_model(
        16, gates=33, network_layers=2, grouping=10, group_sum_tau=1.0, gate_optimizer="softmax"
    )
    assert model.widths == [33, 40]
    assert model(torch.rand(2, 16)).shape == (2, 10)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"residual_layers": 4}, "residual_layers"),
        ({"gates": 0}, "gates"),
        ({"network_layers": 0}, "network_layers"),
        ({"group_sum_tau": 0.0}, "group_sum_tau"),
        ({"gate_optimizer": "adamax"}, "gate_optimizer"),
        ({"backend": "tpu"}, "backend"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(30, **{**ARGS, **changes})  # type: ignore[arg-type]


def test_residual_layers_start_as_pass_through() -> None:
    torch.manual_seed(1)
    # A strong start (residualPassProb 0.99) is a wire everywhere; the default 0.3 is not.
    model = build_model(30, **{**ARGS, "residual_layers": 2, "residual_pass_prob": 0.99})
    gates = [layer.gates() for layer in model.layers]
    assert (gates[0] == PASS_THROUGH_A).all() and (gates[1] == PASS_THROUGH_A).all()
    assert not (gates[2] == PASS_THROUGH_A).all()


def test_relaxed_evaluation_is_noise_free_and_restores_the_mode() -> None:
    torch.manual_seed(2)
    model = build_model(30, **{**ARGS, "gate_optimizer": "sparsemax_noise", "noise_temp": 1.0})
    x = torch.rand(9, 30)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # training noise
        with relaxed_evaluation(model):
            first, second = model(x), model(x)
        assert model.training
        model.eval()
        discrete = model(x)
    assert torch.equal(first, second)
    assert not torch.equal(first, discrete)


@needs_compiler
@pytest.mark.parametrize("train", [True, False])
def test_backends_agree_on_a_whole_network(train: bool) -> None:
    torch.manual_seed(3)
    ours = build_model(30, **ARGS, backend="cpp")
    torch.manual_seed(3)
    plain = build_model(30, **ARGS, backend="torch")
    x = torch.rand(12, 30)
    ours.train(train)
    plain.train(train)
    y1, y2 = ours(x), plain(x)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    if train:
        y1.square().sum().backward()
        y2.square().sum().backward()
        for l1, l2 in zip(ours.layers, plain.layers, strict=True):
            torch.testing.assert_close(l1.logits.grad, l2.logits.grad, rtol=1e-4, atol=1e-6)

"""The request model: the seed's body as is, every bad field named, one mapping to the CLI."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.hyperparameters import (
    GATE_OPTIMIZERS,
    TRAINER_FLAGS,
    JobRequest,
    field_errors,
    to_trainer_args,
)

SEED = {
    "gateOptimizer": "sparsemax_noise",
    "gates": 3332,
    "networkLayers": 4,
    "grouping": 10,
    "groupSumTau": 100,
    "residualLayers": 4,
    "noiseTemp": 0.2,
    "epochs": 5,
}


def test_seed_body_is_accepted_as_is() -> None:
    req = JobRequest.model_validate(SEED)
    hp = req.hyperparameters()
    assert hp["gateOptimizer"] == "sparsemax_noise"
    assert hp["groupSumTau"] == 100.0
    assert "name" not in hp
    assert "maxAttempts" not in hp
    assert req.maxAttempts == 3


def test_nine_gate_optimizers() -> None:
    assert len(GATE_OPTIMIZERS) == 9
    for name in GATE_OPTIMIZERS:
        JobRequest.model_validate({**SEED, "gateOptimizer": name})


def _errors(body: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate(body)
    return {e["field"]: e["message"] for e in field_errors(info.value)}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"gates": 0}, "gates"),
        ({"gates": "3332"}, "gates"),
        ({"gates": True}, "gates"),
        ({"gates": 1.5}, "gates"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": -1}, "epochs"),
        ({"gateOptimizer": "adam"}, "gateOptimizer"),
        ({"noiseTemp": -0.1}, "noiseTemp"),
        ({"groupSumTau": 0}, "groupSumTau"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"maxAttempts": 0}, "maxAttempts"),
        ({"learningRate": "fast"}, "learningRate"),
    ],
)
def test_bad_values_are_named(patch: dict[str, object], field: str) -> None:
    assert field in _errors({**SEED, **patch})


def test_unknown_key_is_named() -> None:
    assert _errors({**SEED, "gatez": 5}) == {"gatez": "unknown field"}


def test_every_bad_field_at_once() -> None:
    errors = _errors({**SEED, "gates": -1, "epochs": "x", "bogus": 1})
    assert set(errors) == {"gates", "epochs", "bogus"}


def test_cross_field_rules() -> None:
    errors = _errors({**SEED, "residualLayers": 5, "networkLayers": 4})
    assert any("residualLayers (5) must not exceed networkLayers (4)" in m for m in errors.values())
    errors = _errors({**SEED, "dataset": "breast_cancer"})
    assert any("grouping (10) must equal the number of classes" in m for m in errors.values())


def test_missing_gate_optimizer() -> None:
    body = dict(SEED)
    del body["gateOptimizer"]
    assert "gateOptimizer" in _errors(body)


def test_trainer_args_mapping() -> None:
    args = to_trainer_args(JobRequest.model_validate(SEED).hyperparameters())
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--gate-optimizer"] == "sparsemax_noise"
    assert pairs["--network-layers"] == "4"
    assert pairs["--group-sum-tau"] == "100.0"
    assert pairs["--residual-layers"] == "4"
    assert pairs["--noise-temp"] == "0.2"
    assert pairs["--batch-size"] == "128"
    assert pairs["--learning-rate"] == "0.01"
    assert set(pairs) == set(TRAINER_FLAGS.values())
    with pytest.raises(KeyError):
        to_trainer_args({"notAField": 1})

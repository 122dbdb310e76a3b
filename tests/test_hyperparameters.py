"""The request model: the seed's body as is, every bad field named, one mapping to the CLI."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.hyperparameters import (
    DATASET_CLASSES,
    DATASETS,
    GATE_OPTIMIZERS,
    SEED_BODY,
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


def test_the_seed_body_constant_is_the_seeds() -> None:
    assert SEED_BODY == SEED


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


def test_the_api_accepts_exactly_what_the_trainer_runs() -> None:
    """The worker hands validated requests to `python -m trainer` as flags: every choice the
    API offers must exist in the trainer, and every request it accepts must parse there."""
    from trainer.cli import CLASSES, build_parser, validate
    from trainer.data import DATASETS as TRAINER_DATASETS
    from trainer.parametrizations import GATE_OPTIMIZERS as TRAINER_OPTIMIZERS

    assert TRAINER_OPTIMIZERS == GATE_OPTIMIZERS
    assert set(TRAINER_DATASETS) == set(DATASETS)
    assert dict(CLASSES) == DATASET_CLASSES
    parser = build_parser()
    for name in GATE_OPTIMIZERS:
        hp = JobRequest.model_validate({**SEED_BODY, "gateOptimizer": name}).hyperparameters()
        args = parser.parse_args(to_trainer_args(hp))
        validate(parser, args)
        assert args.gate_optimizer == name
        assert (args.gates, args.residual_layers, args.group_sum_tau) == (3332, 4, 100.0)


def test_gumbel_needs_a_positive_temperature() -> None:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({**SEED_BODY, "gateOptimizer": "gumbel_softmax", "noiseTemp": 0})
    assert [e["field"] for e in field_errors(info.value)] == ["noiseTemp"]
    # Without Gumbel noise a zero temperature just means no noise.
    JobRequest.model_validate({**SEED_BODY, "gateOptimizer": "sparsemax_noise", "noiseTemp": 0})

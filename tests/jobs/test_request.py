"""The request model: the seed's body as is, every bad field named, the same checks and flags
as the trainer's, all generated from the one definition of each option."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.cli import build_parser as gatequeue_parser
from service.jobs.request import (
    REQUEST_OPTIONS,
    SEED_BODY,
    JobRequest,
    describe_options,
    field_errors,
)
from trainer.cli import build_parser as trainer_parser
from trainer.cli import validate
from trainer.data.catalog import CLASSES
from trainer.options import TRAINING_OPTIONS, trainer_args
from trainer.parametrizations import REGISTRY

# The seed's request as docs/design.md quotes it, written out on purpose: a change to
# SEED_BODY must not be able to change what this test holds the API to.
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
    for body in (SEED, SEED_BODY):
        req = JobRequest.model_validate(body)
        hp = req.hyperparameters()
        assert hp["gateOptimizer"] == "sparsemax_noise"
        assert hp["groupSumTau"] == 100.0
        assert "name" not in hp
        assert "maxAttempts" not in hp
        assert req.run_options()["maxAttempts"] == 3


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_parametrization_is_accepted_and_runs_in_the_trainer(name: str) -> None:
    hp = JobRequest.model_validate({**SEED, "gateOptimizer": name}).hyperparameters()
    parser = trainer_parser()
    args = parser.parse_args(trainer_args(hp))
    validate(parser, args)
    assert args.gate_optimizer == name


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
        ({"dataset": "image net"}, "dataset"),
        ({"maxAttempts": 0}, "maxAttempts"),
        ({"learningRate": "fast"}, "learningRate"),
        ({"learningRate": 0}, "learningRate"),
        ({"gateEstimator": "hard"}, "gateEstimator"),
        ({"gateEstimator": None}, "gateEstimator"),
        ({"residualPassProb": 0.0625}, "residualPassProb"),
        ({"residualPassProb": 1.0}, "residualPassProb"),
    ],
)
def test_bad_values_are_named(patch: dict[str, object], field: str) -> None:
    assert field in _errors({**SEED, **patch})


@pytest.mark.parametrize("name", list(REGISTRY))
def test_a_null_learning_rate_is_stored_as_the_gate_optimizers(name: str) -> None:
    """Left out or null, `learningRate` is the map's own rate, stored as a number, and the
    trainer resolves it the same way; a given rate wins."""
    own = REGISTRY[name].learning_rate
    for body in ({**SEED, "gateOptimizer": name}, {**SEED, "gateOptimizer": name,
                                                    "learningRate": None}):  # fmt: skip
        assert JobRequest.model_validate(body).hyperparameters()["learningRate"] == own
    parser = trainer_parser()
    args = parser.parse_args(["--gate-optimizer", name])
    validate(parser, args)
    assert args.learning_rate == own
    given = JobRequest.model_validate({**SEED, "gateOptimizer": name, "learningRate": 0.123})
    assert given.hyperparameters()["learningRate"] == 0.123


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
    errors = _errors({**SEED, "gates": 4})
    assert errors == {"gates": "gates (4) must be at least grouping (10)"}


def test_missing_gate_optimizer() -> None:
    body = dict(SEED)
    del body["gateOptimizer"]
    assert "gateOptimizer" in _errors(body)


def test_trainer_args_mapping() -> None:
    args = trainer_args(JobRequest.model_validate(SEED).hyperparameters())
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--gate-optimizer"] == "sparsemax_noise"
    assert pairs["--network-layers"] == "4"
    assert pairs["--group-sum-tau"] == "100.0"
    assert pairs["--residual-layers"] == "4"
    assert pairs["--noise-temp"] == "0.2"
    assert pairs["--batch-size"] == "128"
    assert pairs["--learning-rate"] == "0.01"
    assert set(pairs) == {o.flag for o in TRAINING_OPTIONS}
    with pytest.raises(KeyError):
        trainer_args({"notAField": 1})


def test_the_api_and_the_trainer_agree_on_defaults() -> None:
    """A request that leaves an option out trains what the trainer runs without the flag."""
    hp = JobRequest.model_validate({"gateOptimizer": "softmax"}).hyperparameters()
    parser = trainer_parser()
    args = parser.parse_args(["--gate-optimizer", "softmax"])
    validate(parser, args)
    assert hp == {o.name: getattr(args, o.dest) for o in TRAINING_OPTIONS}


def test_api_and_trainer_refuse_the_same_bodies() -> None:
    parser = trainer_parser()
    for patch in ({"residualLayers": 5}, {"dataset": "breast_cancer"}, {"gates": 4},
                  {"gateOptimizer": "gumbel_softmax", "noiseTemp": 0}):  # fmt: skip
        body = {**SEED, **patch}
        with pytest.raises(ValidationError):
            JobRequest.model_validate(body)
        flags = trainer_args({k: v for k, v in body.items() if k != "name"})
        with pytest.raises(SystemExit):
            validate(parser, parser.parse_args(flags))


def test_every_option_reaches_every_surface(capsys: pytest.CaptureFixture[str]) -> None:
    """Adding an option is one entry: it is in the request model, the OpenAPI schema, the
    trainer's flags, `gatequeue submit`'s flags and the web form's description."""
    from service.api.openapi import openapi_document
    from service.api.routes import ROUTES

    schema = openapi_document(ROUTES)["components"]["schemas"]["JobRequest"]["properties"]
    form = {o["name"] for group in describe_options().values() for o in group}
    trainer_help = trainer_parser().format_help()
    submit = gatequeue_parser()._subparsers._group_actions[0].choices["submit"]  # type: ignore[union-attr]
    submit_help = submit.format_help()
    for option in REQUEST_OPTIONS:
        assert option.name in JobRequest.model_fields
        assert option.name in schema
        assert option.name in form
        assert option.flag in submit_help
    for option in TRAINING_OPTIONS:
        assert option.flag in trainer_help


def test_the_catalog_matches_the_loaders() -> None:
    from trainer.data import load_dataset

    for name in ("digits", "breast_cancer"):  # the file data sets have their own tests
        data = load_dataset(name)
        assert len(set(data.y_train.tolist())) == CLASSES[name] == data.classes


def test_gumbel_needs_a_positive_temperature() -> None:
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate({**SEED_BODY, "gateOptimizer": "gumbel_softmax", "noiseTemp": 0})
    assert [e["field"] for e in field_errors(info.value)] == ["noiseTemp"]
    # Without Gumbel noise a zero temperature just means no noise.
    JobRequest.model_validate({**SEED_BODY, "gateOptimizer": "sparsemax_noise", "noiseTemp": 0})

"""The body of `POST /jobs`: the training options (trainer.options) and the run options
(service.jobs.options), flat and camelCase as the seed's request had them.

The model is generated from those two lists, so it validates exactly what the trainer
accepts (the same rules, the same bounds) and documents itself in OpenAPI.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from service.jobs.options import RUN_NAMES, RUN_OPTIONS
from trainer.options import (
    TRAINING_NAMES,
    TRAINING_OPTIONS,
    CheckedOptions,
    Option,
    StrictOptions,
    options_model,
    resolve_defaults,
)

# The body the seed's README sent with curl: the example in the OpenAPI document, the web
# form's starting values and the benchmark's request. It must stay valid as is.
SEED_BODY: dict[str, Any] = {
    "gateOptimizer": "sparsemax_noise",
    "gates": 3332,
    "networkLayers": 4,
    "grouping": 10,
    "groupSumTau": 100,
    "residualLayers": 4,
    "noiseTemp": 0.2,
    "epochs": 5,
}

REQUEST_OPTIONS: tuple[Option, ...] = (*TRAINING_OPTIONS, *RUN_OPTIONS)
_PATTERN_HELP = {o.name: o.pattern_help for o in REQUEST_OPTIONS if o.pattern_help}


class RequestBase(CheckedOptions):
    """What every job request can do with itself, whatever fields it was generated with."""

    def hyperparameters(self) -> dict[str, Any]:
        """The training options: what is stored under the job's `hyperparameters`."""
        return self.split()[0]

    def run_options(self) -> dict[str, Any]:
        """The run options: stored at the job's top level."""
        return self.split()[1]

    def split(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(training options, run options) from one dump of the request, with the nulls
        that stand for a chosen value resolved (trainer.options.resolve_defaults): the job
        stores what its run uses."""
        values = resolve_defaults(self.model_dump())
        return (
            {k: values[k] for k in TRAINING_NAMES if k in values},
            {k: values[k] for k in RUN_NAMES if k in values},
        )


JobRequest: type[RequestBase] = options_model(  # type: ignore[assignment]
    "JobRequest",
    REQUEST_OPTIONS,
    request=True,
    doc="The body of POST /jobs: training options and run options, flat.",
    base=RequestBase,
)


# One value of each request field, checked alone with the model's own rules (strict, no
# NaN, the same bounds): a sweep lists values that no single job may ever be made of.
_RULES = StrictOptions.model_config
_STRICT = ConfigDict(strict=_RULES["strict"], allow_inf_nan=_RULES["allow_inf_nan"])
_VALUE: dict[str, TypeAdapter[Any]] = {
    o.name: TypeAdapter(o.value_type(), config=_STRICT) for o in REQUEST_OPTIONS
}


def value_errors(name: str, value: Any, where: str) -> list[dict[str, str]]:
    """What is wrong with `value` as a value of request field `name`, as `field_errors`
    entries located at `where` (e.g. `grid.seed.1`); [] when it is a valid one."""
    adapter = _VALUE.get(name)
    if adapter is None:
        return [{"field": where, "message": "unknown field", "type": "extra_forbidden"}]
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return field_errors(exc, where=where, option=name)
    return []


def field_errors(
    exc: ValidationError, *, where: str | None = None, option: str | None = None
) -> list[dict[str, str]]:
    """Turn pydantic's errors into the API's `fields` list: one entry per bad field (`where`
    names the field of an error without a location: a lone value of `option`)."""
    out: list[dict[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or where or "body"
        message = err["msg"]
        help_of = option or loc
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "string_pattern_mismatch" and help_of in _PATTERN_HELP:
            message = _PATTERN_HELP[help_of]
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        out.append({"field": loc, "message": message, "type": err["type"]})
    return out


def describe_options() -> dict[str, Any]:
    """What `GET /options` answers: every request field with its type, bounds and help, the
    seed's value for those it sets, grouped as the web form shows them."""
    training = [{**o.describe(), "seed": SEED_BODY.get(o.name)} for o in TRAINING_OPTIONS]
    run = [o.describe() for o in RUN_OPTIONS]
    return {"training": training, "run": run}

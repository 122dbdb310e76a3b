"""The job request body: one model that validates submissions, documents them in OpenAPI,
drives the CLI's flags, and maps to the trainer's command line.

Keeping all four in one place is the point: a field added here appears in the API, the
CLI and the trainer invocation at once (DESIGN.md, Hyperparameters).
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

GateOptimizer = Literal[
    "softmax",
    "gumbel_softmax",
    "sparsemax",
    "gumbel_sparsemax",
    "sparsemax_noise",
    "log_softmax",
    "entmax",
    "relu_normalized",
    "balenas",
]
GATE_OPTIMIZERS: tuple[str, ...] = get_args(GateOptimizer)

Dataset = Literal["digits", "breast_cancer", "mnist", "cifar10"]
DATASETS: tuple[str, ...] = get_args(Dataset)
DATASET_CLASSES: dict[str, int] = {"digits": 10, "breast_cancer": 2, "mnist": 10, "cifar10": 10}

# The body the seed's README sent with curl: the example in the OpenAPI document and the
# benchmark's request. It must stay valid as is (tests/test_hyperparameters.py).
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

# The fields of a request that are not training parameters but options of the run.
RUN_OPTIONS = ("name", "maxAttempts")


class Hyperparameters(BaseModel):
    """What the trainer needs; camelCase as the seed's request body had it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    gateOptimizer: GateOptimizer = Field(description="How gate logits become probabilities.")
    gates: int = Field(3332, ge=1, le=1_000_000, description="Logic gates per layer.")
    networkLayers: int = Field(4, ge=1, le=64, description="Number of logic layers.")
    grouping: int = Field(
        10, ge=2, le=1000, description="Classes k of GroupSum; must match the data set."
    )
    groupSumTau: float = Field(100.0, gt=0, le=1e6, description="GroupSum temperature.")
    residualLayers: int = Field(
        0, ge=0, le=64, description="Leading layers initialised as pass-through gates."
    )
    noiseTemp: float = Field(0.2, ge=0, le=100, description="Noise scale or temperature.")
    epochs: int = Field(5, ge=1, le=10_000)
    dataset: Dataset = "digits"
    batchSize: int = Field(128, ge=1, le=65_536)
    learningRate: float = Field(0.01, gt=0, le=10)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _cross_field(self) -> Hyperparameters:
        # Each rule is reported on the field a client should change, all of them at once,
        # instead of one whole-model error at the root that names no field.
        problems: list[tuple[str, str]] = []
        if self.residualLayers > self.networkLayers:
            problems.append(
                (
                    "residualLayers",
                    f"residualLayers ({self.residualLayers}) must not exceed "
                    f"networkLayers ({self.networkLayers})",
                )
            )
        classes = DATASET_CLASSES[self.dataset]
        if self.grouping != classes:
            problems.append(
                (
                    "grouping",
                    f"grouping ({self.grouping}) must equal the number of classes of "
                    f"{self.dataset} ({classes})",
                )
            )
        elif self.gates < self.grouping:
            problems.append(
                ("gates", f"gates ({self.gates}) must be at least grouping ({self.grouping})")
            )
        if self.gateOptimizer.startswith("gumbel_") and self.noiseTemp == 0:
            problems.append(
                (
                    "noiseTemp",
                    f"gateOptimizer {self.gateOptimizer} divides by noiseTemp: it must be > 0",
                )
            )
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("cross_field", message),
                        loc=(field,),
                        input=getattr(self, field),
                    )
                    for field, message in problems
                ],
            )
        return self


class JobRequest(Hyperparameters):
    """The body of POST /jobs: the hyperparameters, flat, plus run options."""

    name: str | None = Field(None, max_length=200, description="A label for people.")
    maxAttempts: int = Field(
        3, ge=1, le=20, description="Runs allowed before a lost job is failed."
    )

    def hyperparameters(self) -> dict[str, Any]:
        return self.model_dump(exclude=set(RUN_OPTIONS))


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Turn pydantic's errors into the API's `fields` list: one entry per bad field."""
    out: list[dict[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        out.append({"field": loc, "message": message, "type": err["type"]})
    return out


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


TRAINER_FLAGS: dict[str, str] = {name: f"--{_kebab(name)}" for name in Hyperparameters.model_fields}


def to_trainer_args(hyperparameters: dict[str, Any]) -> list[str]:
    """The trainer's argv for stored hyperparameters: `gateOptimizer` -> `--gate-optimizer`."""
    args: list[str] = []
    for key, value in hyperparameters.items():
        if key not in TRAINER_FLAGS:
            raise KeyError(f"no trainer flag for hyperparameter {key!r}")
        args += [TRAINER_FLAGS[key], str(value)]
    return args

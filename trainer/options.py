"""Every training option, defined once: name, type, bounds, default, help and the rules
between options (docs/design.md, "How to add a training option").

From `TRAINING_OPTIONS` come the API's request model (service.jobs.request), the flags of
`gatequeue submit` and of `python -m trainer`, the mapping from a stored job to the trainer's
argv, and the web page's form (it reads `GET /options`). The same pydantic model validates a
request in the API and the flags in the trainer, so the two cannot accept different things.

No torch or numpy here: the API image has neither.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from trainer import convspec
from trainer.data.catalog import CLASSES, DATASET_NAME_MAX, DATASET_PATTERN, DATASETS, IMAGE_SHAPES
from trainer.parametrizations import (
    ESTIMATORS,
    GATE_OPTIMIZERS,
    REGISTRY,
    RESIDUAL_PASS_PROB,
)

# A number, a text, or an object (a pydantic model: a run option such as `notify`, which
# has no form field and whose flag the model reads with its `from_flag`).
Kind = type[int] | type[float] | type[str] | type[BaseModel]
ARCHITECTURES: tuple[str, ...] = ("dense", "conv")
Spell = Callable[[str], str]
_REQUIRED: Any = ...


def flag_of(name: str) -> str:
    """`gateOptimizer` -> `--gate-optimizer`: how every command line spells an option."""
    return "--" + re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def dest_of(name: str) -> str:
    """`gateOptimizer` -> `gate_optimizer`: argparse's attribute for the flag."""
    return flag_of(name)[2:].replace("-", "_")


@dataclass(frozen=True)
class Option:
    """One option of a job.

    `request_required`: a job request must give it (no default there), while the trainer's
    command line falls back to `default`. `advanced`: the web form tucks it under "More
    options".
    """

    name: str
    kind: Kind
    default: Any
    help: str
    label: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None
    request_required: bool = False
    advanced: bool = False
    nullable: bool = False
    max_length: int | None = None
    pattern: str | None = None
    pattern_help: str = ""  # what a value breaking `pattern` is told
    # What a null default means, where it stands for a value chosen later (`learningRate`:
    # the gate optimizer's own); shown as the default by /options, the form and --help.
    default_text: str = ""

    @property
    def flag(self) -> str:
        return flag_of(self.name)

    @property
    def dest(self) -> str:
        return dest_of(self.name)

    def annotation(self) -> Any:
        base: Any = Literal[self.choices] if self.choices else self.kind  # type: ignore[valid-type]
        return base | None if self.nullable else base

    def _bounds(self) -> dict[str, Any]:
        bounds = {
            "ge": self.ge, "gt": self.gt, "le": self.le, "max_length": self.max_length,
            "pattern": self.pattern,
        }  # fmt: skip
        return {k: v for k, v in bounds.items() if v is not None}

    def pydantic_field(self, *, request: bool) -> tuple[Any, Any]:
        default = _REQUIRED if request and self.request_required else self.default
        return self.annotation(), Field(  # type: ignore[call-overload]
            default, description=self.help, title=self.label, **self._bounds()
        )

    def value_type(self) -> Any:
        """The type of one value of the option, bounds included (the model's field without
        its default): a sweep checks each value it lists with it."""
        return Annotated[self.annotation(), Field(**self._bounds())]

    def describe(self) -> dict[str, Any]:
        """The option as the web form reads it (`GET /options`)."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": {int: "integer", float: "number", str: "string"}.get(self.kind, "object"),
            "label": self.label,
            "help": self.help,
            "default": self.default,
            "required": self.request_required,
            "advanced": self.advanced,
            "nullable": self.nullable,
        }
        for key, value in (
            ("minimum", self.ge),
            ("exclusiveMinimum", self.gt),
            ("maximum", self.le),
            ("choices", list(self.choices) if self.choices else None),
            ("maxLength", self.max_length),
            ("defaultText", self.default_text or None),
        ):
            if value is not None:
                out[key] = value
        return out


# The null learning rate's meaning, as /options, the form and --help show it.
_LEARNING_RATE_TEXT = "the gate optimizer's: " + ", ".join(
    f"{name} {entry.learning_rate:g}" for name, entry in REGISTRY.items()
)

TRAINING_OPTIONS: tuple[Option, ...] = (
    Option(
        "gateOptimizer", str, "sparsemax_noise",
        "how each neuron's 16 gate logits become probabilities: " + ", ".join(GATE_OPTIMIZERS),
        "Gate optimizer", choices=GATE_OPTIMIZERS, request_required=True,
    ),
    Option(
        "gates", int, 3332,
        "logic gates per layer; the last layer is rounded up to a multiple of grouping",
        "Gates per layer", ge=1, le=1_000_000,
    ),
    Option("networkLayers", int, 4, "number of logic layers", "Network layers", ge=1, le=64),
    Option(
        "grouping", int, 10, "classes k of GroupSum; must equal the data set's number of classes",
        "Grouping (classes)", ge=2, le=1000,
    ),
    # The lower bound keeps the loss finite for any network: a group sums at most
    # gates + grouping - 1 (~1e6) outputs in [0, 1], so its score is <= ~1e9 and each
    # gradient through it <= 1/tau = 1000, far inside float32 (3.4e38). Below ~3e-33 a
    # million ones overflow to inf, and 5e-324 is 0 in float32: the loss was NaN (issue 26).
    Option(
        "groupSumTau", float, 100.0,
        "GroupSum temperature: class scores are group sums / tau (at least 0.001, which keeps "
        "them finite in float32 for any number of gates)",
        "GroupSum τ", ge=1e-3, le=1e6,
    ),
    Option(
        "residualLayers", int, 0, "leading layers initialised as pass-through gates",
        "Residual layers", ge=0, le=64,
    ),
    Option(
        "residualPassProb", float, RESIDUAL_PASS_PROB,
        "initial probability of the pass-through gate in the residual layers (the other "
        "logits start as random ones): how strongly they start as wires",
        "Residual pass probability", gt=1 / 16, le=0.99, advanced=True,
    ),
    Option(
        "gateEstimator", str, "straight_through",
        "how a training step uses the gates: soft (the relaxed mixture) or straight_through "
        "(the argmax gates forward, the discrete network; the relaxed map's gradient back)",
        "Gate estimator", choices=ESTIMATORS, advanced=True,
    ),
    Option(
        "noiseTemp", float, 0.2,
        "Gumbel temperature (gumbel_*) or Gaussian noise scale (sparsemax_noise)",
        "Noise temperature", ge=0, le=100,
    ),
    Option("epochs", int, 5, "passes over the data", "Epochs", ge=1, le=10_000),
    Option(
        "dataset", str, "digits",
        "the data set: a built-in (" + ", ".join(DATASETS) + ") or a registered one, "
        "`name` (its latest version) or `name@version` (docs/datasets.md)",
        "Data set", advanced=True, max_length=DATASET_NAME_MAX + 10, pattern=DATASET_PATTERN,
        pattern_help="a data set name (letters, digits, `.`, `_`, `-`), optionally "
        "`@version`",
    ),
    Option("batchSize", int, 128, "samples per step", "Batch size", ge=1, le=65_536, advanced=True),
    Option(
        "learningRate", float, None, "Adam's step size", "Learning rate", gt=0, le=10,
        advanced=True, nullable=True, default_text=_LEARNING_RATE_TEXT,
    ),
    Option(
        "seed", int, 0,
        "seeds connections, initial logits, batch order, noise and the validation split",
        "Seed", ge=0, le=2**31 - 1, advanced=True,
    ),
    Option(
        "validFraction", float, 0.1,
        "share of the training set held out, stratified and fixed by seed, to select the "
        "kept epoch on (never trained on); 0: none, the last epoch is kept",
        "Validation fraction", ge=0, le=0.5, advanced=True,
    ),
    # The convolutional network (trainer.conv, docs/trainer.md "Convolutional networks"):
    # conv blocks, then `networkLayers` dense layers of `gates`. Ignored by dense runs.
    Option(
        "architecture", str, "dense",
        "network family: dense (logic layers) or conv (tree convolutions and OR pooling, "
        "then the dense layers; image data sets only)",
        "Architecture", choices=ARCHITECTURES,
    ),
    Option(
        "convChannels", str, "16,32",
        "conv: output channels of each block, comma-separated (one block each)",
        "Conv channels", advanced=True, max_length=64, pattern=convspec.CHANNELS_PATTERN,
        pattern_help="a comma-separated list of 1 to 8 channel counts, each 1..9999",
    ),
    Option(
        "kernelSize", int, 3, "conv: receptive field of each tree, kernel x kernel pixels",
        "Kernel size", ge=1, le=15, advanced=True,
    ),
    Option(
        "convStride", int, 1, "conv: stride of the tree convolutions", "Conv stride",
        ge=1, le=8, advanced=True,
    ),
    Option(
        "convPadding", int, 1, "conv: zero padding on each side of a block's input",
        "Conv padding", ge=0, le=7, advanced=True,
    ),
    Option(
        "treeDepth", int, 2,
        "conv: depth of each channel's gate tree (2: four inputs, three gates)",
        "Tree depth", ge=1, le=6, advanced=True,
    ),
    Option(
        "poolSize", int, 2,
        "conv: logical-OR pooling window and stride after each block (1: no pooling)",
        "OR pooling", ge=1, le=8, advanced=True,
    ),
)  # fmt: skip

TRAINING_NAMES: tuple[str, ...] = tuple(o.name for o in TRAINING_OPTIONS)
# The options only a conv network reads; a dense run's hash leaves them out
# (`hyperparameters_hash`), so checkpoints of dense runs from before they existed resume.
CONV_NAMES: tuple[str, ...] = (
    "architecture", "convChannels", "kernelSize", "convStride", "convPadding", "treeDepth",
    "poolSize",
)  # fmt: skip

KEEP_CHOICES: tuple[str, ...] = ("best", "last")

# Run options the trainer reads: how a run goes, not what it trains (they are not part of
# `hyperparameters_hash`, so a checkpoint resumes under another interval). They are job run
# options too (service.jobs.options) and flags of `python -m trainer`.
RUN_CONTROL_OPTIONS: tuple[Option, ...] = (
    Option(
        "checkpointIntervalS", float, 300.0,
        "seconds between checkpoints, written at the end of an epoch (0: every epoch)",
        "Checkpoint every (s)", ge=0, le=7 * 24 * 3600, advanced=True,
    ),
    Option(
        "keep", str, "best",
        "which epoch's network is saved: best (highest val_acc_discrete) or last",
        "Keep", choices=KEEP_CHOICES, advanced=True,
    ),
)  # fmt: skip


# -- rules between options ---------------------------------------------------------------

Problem = tuple[str, str]  # (the field a user should change, the message)


def _residual_within_layers(v: Mapping[str, Any], spell: Spell) -> Iterator[Problem]:
    # A conv network's residual layers count its blocks first, then its dense layers.
    conv = v["architecture"] == "conv"
    blocks = len(str(v["convChannels"]).split(",")) if conv else 0
    if v["residualLayers"] > v["networkLayers"] + blocks:
        yield (
            "residualLayers",
            (
                f"{spell('residualLayers')} ({v['residualLayers']}) must not exceed "
                f"{spell('networkLayers')} ({v['networkLayers']})"
                + (f" plus the conv blocks of {spell('convChannels')} ({blocks})" if conv else "")
            ),
        )


def _grouping_fits_data(v: Mapping[str, Any], spell: Spell) -> Iterator[Problem]:
    # A registered data set's classes are its record's: the API checks them against the
    # store (service/api/datasets.py), the trainer against the file it loads.
    classes = CLASSES.get(v["dataset"])
    if classes is not None and v["grouping"] != classes:
        yield (
            "grouping",
            (
                f"{spell('grouping')} ({v['grouping']}) must equal the number of classes of "
                f"{v['dataset']} ({classes})"
            ),
        )
    elif v["gates"] < v["grouping"]:
        yield (
            "gates",
            (
                f"{spell('gates')} ({v['gates']}) must be at least {spell('grouping')} "
                f"({v['grouping']})"
            ),
        )


def _temperature_divides(v: Mapping[str, Any], spell: Spell) -> Iterator[Problem]:
    if REGISTRY[v["gateOptimizer"]].divides_by_temperature and v["noiseTemp"] == 0:
        yield (
            "noiseTemp",
            (
                f"{spell('gateOptimizer')} {v['gateOptimizer']} divides by {spell('noiseTemp')}: "
                "it must be > 0"
            ),
        )


def _conv_fits_data(v: Mapping[str, Any], spell: Spell) -> Iterator[Problem]:
    # As for grouping: a registered data set's image shape is its record's, checked by the
    # API against the store (service/api/datasets.py), by the trainer against its file.
    if v["architecture"] != "conv" or v["dataset"] not in CLASSES:
        return
    spec = convspec.ConvSpec.from_options(v)
    for field, message in convspec.problems(IMAGE_SHAPES.get(v["dataset"]), v["dataset"], spec):
        yield field, f"{spell(field)}: {message}"


RULES: tuple[Callable[[Mapping[str, Any], Spell], Iterator[Problem]], ...] = (
    _residual_within_layers,
    _grouping_fits_data,
    _temperature_divides,
    _conv_fits_data,
)


def rule_problems(values: Mapping[str, Any], spell: Spell = str) -> list[Problem]:
    """Every rule broken by `values` (valid field by field), each on the field to change."""
    return [p for rule in RULES for p in rule(values, spell)]


# -- the model ---------------------------------------------------------------------------


class StrictOptions(BaseModel):
    """No coercion (`"10"` and `true` are not integers), no unknown keys, no NaN."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class CheckedOptions(StrictOptions):
    """Adds the rules between training options; each broken rule is reported on its field,
    all of them at once, instead of one error at the root that names no field. The
    validation context's `spell` names fields in messages (the trainer passes flag names)."""

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> CheckedOptions:
        spell: Spell = (info.context or {}).get("spell", str)
        problems = rule_problems(self.model_dump(include=set(TRAINING_NAMES)), spell)
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


def options_model(
    name: str,
    options: Sequence[Option],
    *,
    request: bool,
    doc: str,
    base: type[CheckedOptions] = CheckedOptions,
) -> type[CheckedOptions]:
    """A pydantic model of `options` with the rules; `request` makes the options a job
    request must give required."""
    fields = {o.name: o.pydantic_field(request=request) for o in options}
    model: type[CheckedOptions] = create_model(  # type: ignore[call-overload]
        name, __base__=base, __doc__=doc, **fields
    )
    return model


TrainingOptions = options_model(
    "TrainingOptions",
    TRAINING_OPTIONS,
    request=False,
    doc="The training options of one run, with the trainer's defaults.",
)


def resolve_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with each null that stands for a chosen value replaced by it: a null
    `learningRate` becomes the gate optimizer's. A job stores, and the trainer runs and
    hashes, the resolved values, so a result says what was used."""
    out = dict(values)
    if out.get("learningRate", 0) is None and out.get("gateOptimizer") in REGISTRY:
        out["learningRate"] = REGISTRY[out["gateOptimizer"]].learning_rate
    return out


def hyperparameters_hash(hyperparameters: Mapping[str, Any]) -> str:
    """A stable digest of what a run trains: a checkpoint is only resumed by a run whose
    training options have the same digest."""
    dense = hyperparameters.get("architecture", "dense") == "dense"
    values = {
        name: hyperparameters[name]
        for name in TRAINING_NAMES
        if name in hyperparameters and not (dense and name in CONV_NAMES)
    }
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def run_control_args(job: Any) -> list[str]:
    """The flags of the run options the trainer reads, from a job record's fields."""
    return [arg for o in RUN_CONTROL_OPTIONS for arg in (o.flag, str(getattr(job, o.name)))]


def trainer_args(hyperparameters: Mapping[str, Any]) -> list[str]:
    """The trainer's argv for stored training options: `gateOptimizer` -> `--gate-optimizer`.

    Raises KeyError for a name that is no training option (a job stored by an older or newer
    version than this worker's).
    """
    known = {o.name: o for o in TRAINING_OPTIONS}
    args: list[str] = []
    for key, value in hyperparameters.items():
        option = known.get(key)
        if option is None:
            raise KeyError(f"no trainer flag for hyperparameter {key!r}")
        if value is None:  # the trainer's own choice (resolve_defaults), as when unset
            continue
        args += [option.flag, str(value)]
    return args

"""What a job's `dataset` names (docs/datasets.md, "Jobs"): a registered data set, looked up
in the store when the job is submitted, or a built-in.

`name` is the name's latest version and `name@version` that version; a registered data set
under a built-in's name (`mnist` registered from local IDX files) takes its place. The job
stores what the name resolved to (`datasetRef`), so a later upload never changes what it
trains on; its memory estimate uses the data set's real shape, `grouping` must equal
its classes, and a conv run needs its image shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.api.errors import validation_error
from service.datasets.record import REF_RE, DatasetRecord, split_ref
from service.jobs.record import DatasetRef
from service.store import Store
from service.sweeps.spec import SweepRequest, listed_values
from trainer import convspec
from trainer.data.catalog import CLASSES, DataShape
from trainer.options import TRAINING_OPTIONS

_DEFAULTS = {o.name: o.default for o in TRAINING_OPTIONS}
_DEFAULT = _DEFAULTS["dataset"]


async def lookup(store: Store, value: str, where: str = "dataset") -> DatasetRecord | None:
    """The registered data set `value` names, None for a built-in; a 422 at `where` for a
    name that is neither."""
    name, version = split_ref(value)
    record = await store.datasets.resolve(name, version)
    if record is not None:
        return record
    if version is None and name in CLASSES:
        return None
    known = await store.datasets.resolve(name, None)
    message = (
        f"data set {name!r} has no version {version} (the latest is {known.version})"
        if known is not None
        else f"no data set named {name!r}: register it (`gatequeue data add`) or use a "
        f"built-in ({', '.join(CLASSES)})"
    )
    raise validation_error([{"field": where, "message": message, "type": "dataset"}])


def grouping_problem(record: DatasetRecord, grouping: Any) -> dict[str, str] | None:
    if grouping == record.classes:
        return None
    return {
        "field": "grouping",
        "message": f"grouping ({grouping}) must equal the number of classes of "
        f"{record.name}@{record.version} ({record.classes})",
        "type": "cross_field",
    }


def shape_problems(
    record: DatasetRecord, hyperparameters: Mapping[str, Any]
) -> list[dict[str, str]]:
    """What a conv run's options cannot do on this data set: it has no image shape (a 422
    at `architecture`), or a kernel, a pooling or channels do not fit its image (at those
    options), as trainer.options' rule says for the built-ins."""
    hp = {**_DEFAULTS, **hyperparameters}
    if hp["architecture"] != "conv":
        return []
    image = record.shape.image
    if image is None:
        return [{
            "field": "architecture",
            "message": f"architecture conv needs an image data set; {record.name}@"
            f"{record.version} has no image shape (upload x_train as (n, height, width) or "
            "(n, height, width, channels) to keep one)",
            "type": "cross_field",
        }]  # fmt: skip
    spec = convspec.ConvSpec.from_options(hp)
    return [
        {"field": field, "message": f"{field}: {message}", "type": "cross_field"}
        for field, message in convspec.problems(image.image_shape(), record.name, spec)
    ]


def dataset_problems(
    record: DatasetRecord, hyperparameters: Mapping[str, Any]
) -> list[dict[str, str]]:
    """Every reason these options cannot train on this registered data set."""
    problem = grouping_problem(record, hyperparameters.get("grouping"))
    return ([] if problem is None else [problem]) + shape_problems(record, hyperparameters)


async def resolve_dataset(
    store: Store, hyperparameters: Mapping[str, Any]
) -> tuple[DatasetRef | None, DataShape | None]:
    """(the registered data set, its shape), or (None, None) for a built-in; a 422 naming
    `dataset` or `grouping` otherwise."""
    record = await lookup(store, hyperparameters.get("dataset", _DEFAULT))
    if record is None:
        return None, None
    problems = dataset_problems(record, hyperparameters)
    if problems:
        raise validation_error(problems)
    return record.ref(), record.shape.data_shape()


async def sweep_datasets(store: Store, spec: SweepRequest) -> dict[str, DatasetRecord]:
    """The registered data sets a sweep names (value -> record); a 422 at the first value
    that names none. Values that are no data set name at all are left to the sweep's own
    validation."""
    found: dict[str, DatasetRecord] = {}
    seen: set[str] = set()
    for option, where, value in listed_values(spec):
        if option != "dataset" or not isinstance(value, str) or value in seen:
            continue
        seen.add(value)
        if REF_RE.fullmatch(value):
            record = await lookup(store, value, where)
            if record is not None:
                found[value] = record
    return found

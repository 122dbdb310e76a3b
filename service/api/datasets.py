"""What a job's `dataset` names (docs/datasets.md, "Jobs"): a registered data set, looked up
in the store when the job is submitted, or a built-in.

`name` is the name's latest version and `name@version` that version; a registered data set
under a built-in's name (`mnist` registered from local IDX files) takes its place. The job
stores what the name resolved to (`datasetRef`), so a later upload never changes what it
trains on; its memory estimate uses the data set's real shape, and `grouping` must equal
its classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.api.errors import validation_error
from service.datasets.record import split_ref
from service.jobs.record import DatasetRef
from service.store import Store
from trainer.data.catalog import CLASSES, DataShape
from trainer.options import TRAINING_OPTIONS

_DEFAULT = next(o.default for o in TRAINING_OPTIONS if o.name == "dataset")


async def resolve_dataset(
    store: Store, hyperparameters: Mapping[str, Any]
) -> tuple[DatasetRef | None, DataShape | None]:
    """(the registered data set, its shape), or (None, None) for a built-in; a 422 naming
    `dataset` or `grouping` otherwise."""
    value = hyperparameters.get("dataset", _DEFAULT)
    name, version = split_ref(value)
    record = await store.datasets.resolve(name, version)
    if record is None:
        if version is None and name in CLASSES:
            return None, None
        known = await store.datasets.resolve(name, None)
        message = (
            f"data set {name!r} has no version {version} (the latest is {known.version})"
            if known is not None
            else f"no data set named {name!r}: register it (`gatequeue data add`) or use a "
            f"built-in ({', '.join(CLASSES)})"
        )
        raise validation_error([{"field": "dataset", "message": message, "type": "dataset"}])
    grouping = hyperparameters.get("grouping")
    if grouping != record.classes:
        raise validation_error(
            [
                {
                    "field": "grouping",
                    "message": f"grouping ({grouping}) must equal the number of classes of "
                    f"{record.name}@{record.version} ({record.classes})",
                    "type": "cross_field",
                }
            ]
        )
    return record.ref(), record.shape.data_shape()

"""The record of a registered data set (collection `datasets`, docs/datasets.md), and how a
job's `dataset` names one.

A data set is its uploaded bytes and how they were encoded: the same bytes with the same
encoding options are the same data set (`key`), and a new one under a taken name is that
name's next `version`. Its files live in the GridFS bucket `datasets`: the upload as it
came (`fileId`, served by `GET /datasets/{id}/file`) and the encoded file a trainer reads
(`encoded`, trainer/data/encoded.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Self

from bson import ObjectId
from pydantic import AliasChoices, Field

from service.jobs.record import DatasetRef, Id, Record, Time, utcnow
from trainer.data.catalog import (
    CLASSES,
    DATASET_PATTERN,
    NAME_PATTERN,
    SHAPES,
    DataShape,
    ImageShape,
)

NAME_RE = re.compile(NAME_PATTERN)
REF_RE = re.compile(DATASET_PATTERN)


class Image(Record):
    """The encoded bits' image layout, height x width x channels (HWC); each value's
    thermometer bits are channels (trainer.data.catalog.ImageShape)."""

    height: int = Field(ge=1)
    width: int = Field(ge=1)
    channels: int = Field(ge=1)

    def image_shape(self) -> ImageShape:
        return ImageShape(self.height, self.width, self.channels)


class Shape(Record):
    inputs: int = Field(ge=1, description="Input bits per sample after encoding.")
    train: int = Field(ge=0)
    valid: int = Field(
        0, ge=0, description="The uploaded validation split (runs validate on it when > 0)."
    )
    test: int = Field(ge=0)
    image: Image | None = Field(
        None,
        description="Where x_train was (n, height, width) or (n, height, width, channels): "
        "the bits' layout, what a conv network needs; null for tabular data.",
    )

    def data_shape(self) -> DataShape:
        """What the memory estimate reads (trainer.memory): the encoded file unpacks to
        uint8 bits, one per input."""
        return DataShape(
            inputs=self.inputs, train=self.train, test=self.test, raw_features=self.inputs,
            valid=self.valid, image=None if self.image is None else self.image.image_shape(),
        )  # fmt: skip


class EncodedFile(Record):
    fileId: Id
    sha256: str
    bytes: int = Field(ge=0)


class Source(Record):
    format: str = Field(description="`npz` or `csv`.")
    filename: str | None = None


class DatasetRecord(Record):
    """A registered data set, as stored and as the API shows it."""

    id: Id = Field(validation_alias=AliasChoices("_id", "id"))
    name: str
    version: int = Field(ge=1)
    sha256: str = Field(description="SHA-256 of the uploaded file.")
    bytes: int = Field(ge=0, description="Size of the uploaded file.")
    classes: int = Field(ge=2)
    shape: Shape
    encoding: dict[str, Any] = Field(
        description="How the upload became bits: bits, method, thresholds' origin, one-hot "
        'categories, label names, the split seed (docs/datasets.md, "Encoding").'
    )
    source: Source
    createdBy: str | None = None
    createdAt: Time
    fileId: Id = Field(description="The upload in the GridFS bucket `datasets`.")
    encoded: EncodedFile = Field(description="The encoded file a trainer reads.")
    key: str = Field(description="Digest of the upload's SHA-256 and the encoding options.")
    builtin: bool = False

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Self:
        return cls.model_validate(doc)

    def to_doc(self) -> dict[str, Any]:
        doc = self.model_dump(exclude={"builtin"})
        doc["_id"] = doc.pop("id")
        return doc

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def ref(self) -> DatasetRef:
        return DatasetRef(id=self.id, name=self.name, version=self.version, sha256=self.sha256)


def dataset_key(sha256: str, options: dict[str, Any]) -> str:
    """The identity of a data set: its bytes and how they are encoded, the options spelled
    one way (the default label column named or not, categorical columns in any order or
    repeated: the same encoding, so the same data set)."""
    options = dict(options)
    if options.get("labelColumn") == "label":
        options["labelColumn"] = None
    if options.get("categorical"):
        options["categorical"] = sorted(set(options["categorical"]))
    blob = json.dumps({"sha256": sha256, "options": options}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def new_dataset(
    *,
    name: str,
    sha256: str,
    size: int,
    classes: int,
    shape: Shape,
    encoding: dict[str, Any],
    source: Source,
    created_by: str | None,
    file_id: ObjectId,
    encoded: EncodedFile,
    key: str,
) -> DatasetRecord:
    """A record without its version yet (the store numbers it: 0 here)."""
    return DatasetRecord.model_construct(
        id=ObjectId(), name=name, version=0, sha256=sha256, bytes=size, classes=classes,
        shape=shape, encoding=encoding, source=source, createdBy=created_by,
        createdAt=utcnow(), fileId=file_id, encoded=encoded, key=key, builtin=False,
    )  # fmt: skip


def builtins_json() -> list[dict[str, Any]]:
    """The data sets compiled into the trainer, listed beside the registered ones."""
    return [
        {
            "name": name,
            "builtin": True,
            "classes": classes,
            "shape": {
                "inputs": SHAPES[name].inputs,
                "train": SHAPES[name].train,
                "valid": 0,
                "test": SHAPES[name].test,
                "image": _image_json(SHAPES[name].image),
            },
        }
        for name, classes in CLASSES.items()
    ]


def _image_json(image: ImageShape | None) -> dict[str, int] | None:
    if image is None:
        return None
    return {"height": image.height, "width": image.width, "channels": image.channels}


def split_ref(value: str) -> tuple[str, int | None]:
    """`name` -> (name, None); `name@3` -> (name, 3). The value matched DATASET_PATTERN."""
    name, _, version = value.partition("@")
    return name, int(version) if version else None

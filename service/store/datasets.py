"""The `datasets` collection and its GridFS bucket `datasets` (docs/datasets.md).

A record is inserted only after both of its files are stored, so a record always has its
files; files whose record never came (the API died between the two) carry
`metadata.datasetKey` and no record names them. Versions are numbered per name by a unique
index on (name, version): two uploads racing for the next number both try it, one wins and
the other takes the number after. The same data set uploaded twice at once is settled by
the unique index on `key`: the loser's files are deleted and it answers with the winner.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.datasets.record import DatasetRecord
from service.store.files import FileStore

DATASETS_BUCKET = "datasets"
MAX_LIST = 500


def _record(doc: dict[str, Any] | None) -> DatasetRecord | None:
    return None if doc is None else DatasetRecord.from_doc(doc)


class DatasetStore:
    def __init__(self, collection: AsyncCollection, files: FileStore) -> None:
        self.collection = collection
        self.files = files

    async def ensure_indexes(self) -> None:
        await self.collection.create_index(
            [("name", ASCENDING), ("version", DESCENDING)], unique=True
        )
        await self.collection.create_index("key", unique=True)

    async def get(self, dataset_id: ObjectId) -> DatasetRecord | None:
        return _record(await self.collection.find_one({"_id": dataset_id}))

    async def by_key(self, key: str) -> DatasetRecord | None:
        return _record(await self.collection.find_one({"key": key}))

    async def resolve(self, name: str, version: int | None) -> DatasetRecord | None:
        """`name`'s latest version, or the one asked for."""
        if version is not None:
            return _record(await self.collection.find_one({"name": name, "version": version}))
        return _record(
            await self.collection.find_one({"name": name}, sort=[("version", DESCENDING)])
        )

    async def list(
        self, *, name: str | None = None, limit: int = MAX_LIST
    ) -> builtins.list[DatasetRecord]:
        """Newest first."""
        query = {} if name is None else {"name": name}
        cursor = self.collection.find(query, sort=[("_id", DESCENDING)], limit=limit)
        return [DatasetRecord.from_doc(doc) async for doc in cursor]

    async def store_file(
        self, path: Path, filename: str, key: str, role: str
    ) -> tuple[ObjectId, int]:
        """A file of a data set to be (GridFS id, length); nothing is left on failure."""
        return await self.files.upload(
            DATASETS_BUCKET, path, filename, {"datasetKey": key, "role": role}
        )

    async def insert(self, record: DatasetRecord) -> tuple[DatasetRecord, bool]:
        """(the record as stored, created). Its `version` is the name's next; an equal data
        set (same `key`) stored meanwhile is returned instead, with created False."""
        while True:
            latest = await self.resolve(record.name, None)
            version = 1 if latest is None else latest.version + 1
            stored = record.model_copy(update={"version": version})
            try:
                await self.collection.insert_one(stored.to_doc())
                return stored, True
            except DuplicateKeyError:
                twin = await self.by_key(record.key)
                if twin is not None:
                    return twin, False
                # Another upload took this version number: take the next.

    async def download(self, file_id: ObjectId, path: Path) -> int:
        """A data set's file to `path` (written beside it and renamed); its length."""
        return await self.files.download(DATASETS_BUCKET, file_id, path)

    async def delete_files(self, *file_ids: ObjectId) -> None:
        await self.files.delete(DATASETS_BUCKET, file_ids)

    async def delete(self, record: DatasetRecord) -> bool:
        """The record, then its files (a file left by a failure is an orphan, not a
        broken record)."""
        result = await self.collection.delete_one({"_id": record.id})
        await self.delete_files(record.fileId, record.encoded.fileId)
        return result.deleted_count == 1

    async def remove_orphans(self, before: datetime) -> int:
        """Files of the bucket that no record names, stored before `before`: the files of an
        upload whose API process died before its record was inserted (a record is inserted
        only after its files, so a younger one may still get its record), and the chunks of
        an upload killed mid-file (FileStore.remove_partial). The number of files removed."""
        by_key: dict[str | None, builtins.list[ObjectId]] = {}
        for file_id, metadata in await self.files.stored_before(DATASETS_BUCKET, before):
            by_key.setdefault(metadata.get("datasetKey"), []).append(file_id)
        orphans: builtins.list[ObjectId] = []
        for key, ids in by_key.items():
            record = None if key is None else await self.by_key(key)
            named = set() if record is None else {record.fileId, record.encoded.fileId}
            orphans += [i for i in ids if i not in named]
        removed = 0
        for file_id in orphans:
            removed += await self.files.discard(DATASETS_BUCKET, file_id)
        return removed + await self.files.remove_partial(DATASETS_BUCKET, before)

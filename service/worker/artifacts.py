"""A successful run's output directory, uploaded to GridFS and linked from its job."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bson import ObjectId

from service.jobs.record import Artifact
from service.store.files import ARTIFACTS_BUCKET, FileStore


async def upload_outputs(
    files: FileStore, job_id: ObjectId, attempt: int, output_dir: Path
) -> list[Artifact]:
    """Every regular file under `output_dir`, sorted by name; on failure none is left.

    GridFS filenames are `<job id>/<relative path>`, so `fs.files` lists a job's files by
    prefix; `metadata.jobId` is there for exact queries.
    """
    paths = await asyncio.to_thread(_list_files, output_dir)
    out: list[Artifact] = []
    try:
        for path in paths:
            name = path.relative_to(output_dir).as_posix()
            file_id, length = await files.upload(
                ARTIFACTS_BUCKET,
                path,
                f"{job_id}/{name}",
                {"jobId": job_id, "attempt": attempt, "name": path.name},
            )
            out.append(Artifact(name=name, fileId=file_id, length=length, bucket=ARTIFACTS_BUCKET))
    except BaseException:
        await delete_artifacts(files, out)
        raise
    return out


async def delete_artifacts(files: FileStore, artifacts: list[Artifact]) -> None:
    await files.delete(ARTIFACTS_BUCKET, (a.fileId for a in artifacts))


def _list_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())

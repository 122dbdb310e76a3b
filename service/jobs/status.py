"""Job status names (docs/design.md: exact spelling) and which ones are final.

Every module that names a status imports `Status`; no other module spells one.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})

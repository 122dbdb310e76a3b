"""What the store raises for its callers to answer: one module for the store's exceptions.

(`outcome.outcome_unknown` says which of PyMongo's own errors leave a write's outcome
unknown; a lost compare-and-set inside a store method stays private to it.)
"""

from __future__ import annotations

from service.jobs.record import JobRecord
from service.sweeps.record import SweepRecord


class IdempotencyKeyReused(Exception):
    """The key was used before, for a job submitted with another body."""

    def __init__(self, job: JobRecord) -> None:
        super().__init__(f"Idempotency-Key was used for job {job.id} with a different body")
        self.job = job


class SweepKeyReused(Exception):
    """The key was used before, for a sweep submitted with another body."""

    def __init__(self, sweep: SweepRecord) -> None:
        super().__init__(f"Idempotency-Key was used for sweep {sweep.id} with a different body")
        self.sweep = sweep


class SweepInProgress(Exception):
    """An earlier request with the same Idempotency-Key is still inserting the sweep."""

    def __init__(self, sweep: SweepRecord) -> None:
        super().__init__(f"sweep {sweep.id} is still being created")
        self.sweep = sweep


class StaleAttempt(Exception):
    """The attempt writing is not the one running the job now: its lines are refused."""


class FileGone(Exception):
    """A record names a stored file that is no longer there (removed by a delete or by
    retention since the record was read)."""

    def __init__(self, bucket: str, file_id: object) -> None:
        super().__init__(f"file {file_id} of {bucket} is no longer stored")

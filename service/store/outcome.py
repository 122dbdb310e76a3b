"""Writes whose outcome is unknown (docs/reliability.md, "Lost replies").

A network error, a timeout, a `NotWritablePrimary` or a write-concern error after a write
was sent does not say whether the write was applied: the reply may be what got lost. Such
a write is never taken as lost. Its writer re-reads the document and decides by content
(is the job's `attemptId` ours, is its status what we wrote), never by inference from
`version`.
"""

from __future__ import annotations

from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    WriteConcernError,
    WTimeoutError,
)

_UNKNOWN_LABELS = ("RetryableWriteError", "UnknownTransactionCommitResult")


def outcome_unknown(exc: BaseException) -> bool:
    """True if the write that raised `exc` may have been applied."""
    if isinstance(exc, ConnectionFailure | WriteConcernError | WTimeoutError | ExecutionTimeout):
        return True  # ConnectionFailure covers AutoReconnect, NotPrimaryError, NetworkTimeout
    if isinstance(exc, OperationFailure):
        return any(exc.has_error_label(label) for label in _UNKNOWN_LABELS)
    return False

"""Idempotency-Key records of jobs and sweeps (docs/security.md, "Idempotency keys").

A key belongs to whoever submitted with it: it is stored as `"<token name> <key>"` in the
document's `idempotencyKey` (the name is empty in open mode, where everyone is one user),
so the unique index on that one field keeps one document per (submitter, key), and one
user's key never finds another's job. Names and keys hold no spaces, so the form is
unambiguous.

A key is remembered for the TTL after the document's `createdAt`, judged by the server's
clock (`$$NOW`). A reuse after that frees the old document's key (the job or sweep itself
stays) and makes a new one; the unique index still settles a race of such reuses.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection


def scoped(submitted_by: str | None, key: str) -> str:
    """The stored form of `key` sent by `submitted_by`."""
    return f"{submitted_by or ''} {key}"


def _deadline(ttl_s: float) -> dict[str, Any]:
    return {"$add": ["$createdAt", round(ttl_s * 1000)]}


def live(stored_key: str, ttl_s: float) -> dict[str, Any]:
    """The filter of the document that holds `stored_key` and has not expired."""
    return {"idempotencyKey": stored_key, "$expr": {"$gt": [_deadline(ttl_s), "$$NOW"]}}


async def free_if_expired(collection: AsyncCollection, stored_key: str, ttl_s: float) -> bool:
    """Forget the key of the document holding it if its TTL passed; whether one was freed."""
    result = await collection.update_one(
        {"idempotencyKey": stored_key, "$expr": {"$lte": [_deadline(ttl_s), "$$NOW"]}},
        {"$unset": {"idempotencyKey": "", "requestHash": ""}},
    )
    return result.modified_count > 0

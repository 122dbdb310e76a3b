"""The `sessions` collection: the web page's short-lived sessions (docs/security.md).

A browser trades its API token once for a session: a random id in an HttpOnly, SameSite
cookie. Only the id's SHA-256 is stored, so a leaked collection opens no session; API
replicas share the collection, so any of them serves the session. A session keeps the name
and the fingerprint of the token it was made from (`token`), never a role: the API takes
the role from that token as it is now, and refuses the session once the token changed.
Expired sessions are refused on lookup (and removed by a TTL index where the server has one);
those of removed tokens are deleted by `delete_of_tokens`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection

from service.jobs.record import utcnow


@dataclass(frozen=True)
class Session:
    name: str | None
    token: str | None  # the fingerprint of its token (service.api.auth.fingerprint)
    expires_at: datetime


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("expiresAt", expireAfterSeconds=0)
        await self.collection.create_index("token")

    async def create(
        self, name: str | None, token: str | None, ttl_s: float
    ) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        expires = utcnow() + timedelta(seconds=ttl_s)
        await self.collection.insert_one(
            {"_id": _key(session_id), "name": name, "token": token, "expiresAt": expires}
        )
        return session_id, Session(name, token, expires)

    async def get(self, session_id: str) -> Session | None:
        doc = await self.collection.find_one({"_id": _key(session_id)})
        if doc is None or doc["expiresAt"] <= utcnow():
            return None
        return Session(doc.get("name"), doc.get("token"), doc["expiresAt"])

    async def delete_of_tokens(self, tokens: Iterable[str]) -> int:
        """End every session made from one of `tokens` (fingerprints); how many there were."""
        result = await self.collection.delete_many({"token": {"$in": list(tokens)}})
        return result.deleted_count

    async def delete(self, session_id: str) -> None:
        await self.collection.delete_one({"_id": _key(session_id)})

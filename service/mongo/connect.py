"""One way to open a MongoDB client, so every process talks to it with the same options."""

from __future__ import annotations

from pymongo import AsyncMongoClient


def connect(uri: str, **options: object) -> AsyncMongoClient:
    """Timezone-aware datetimes everywhere: the job document's times are UTC instants.

    `serverSelectionTimeoutMS` is kept short so an unreachable database is a clear error in
    seconds rather than a 30 s hang at a user's terminal.
    """
    options.setdefault("tz_aware", True)
    options.setdefault("serverSelectionTimeoutMS", 10_000)
    options.setdefault("appname", "gatequeue")
    return AsyncMongoClient(uri, **options)  # type: ignore[arg-type]

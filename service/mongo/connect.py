"""One way to open a MongoDB client, so every process talks to it with the same options.

Some options are pinned whatever `MONGODB_URI` says (keyword arguments win over the URI's
options in PyMongo), because the queue's correctness rests on them:

- `readPreference=primary`: a claim, a renewal and the re-read that settles a write whose
  reply was lost must see the latest state; a secondary may lag by seconds and would show a
  job as still Pending after it was claimed.
- `w="majority"` (with the journal): an acknowledged claim or final status survives an
  election; with `w=1` a primary that steps down can roll back a write it already
  acknowledged, and a job could run twice.
- `retryWrites` and `retryReads`: the driver's single retry absorbs a primary step-down.

Timeouts (docs/reliability.md, "Leases"): `serverSelectionTimeoutMS` is 10 s, a third of the
default 30 s lease, so an operation stuck during an election fails and is retried by us
well within a lease; `connectTimeoutMS` is 5 s. The lease is 30 s because elections take up
to about 12 s: a renewal every 10 s survives one election plus a slow retry.
"""

from __future__ import annotations

import re

from pymongo import AsyncMongoClient
from pymongo.read_preferences import ReadPreference

PINNED: dict[str, object] = {
    "read_preference": ReadPreference.PRIMARY,
    "w": "majority",
    "journal": True,
    "retryWrites": True,
    "retryReads": True,
}
SERVER_SELECTION_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_MS = 5_000


def connect(uri: str, **options: object) -> AsyncMongoClient:
    """Timezone-aware datetimes everywhere: the job document's times are UTC instants. The
    timeouts above are defaults: the URI's own and the caller's win. The pinned options win
    over both."""
    defaults = {
        "serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS,
        "connectTimeoutMS": CONNECT_TIMEOUT_MS,
        "appname": "gatequeue",
    }
    for name, value in defaults.items():
        if not re.search(rf"[?&]{name}=", uri, re.IGNORECASE):
            options.setdefault(name, value)
    options.setdefault("tz_aware", True)
    return AsyncMongoClient(uri, **{**options, **PINNED})  # type: ignore[arg-type]

"""connect() pins what the queue's correctness rests on, whatever MONGODB_URI says."""

from __future__ import annotations

from pymongo.read_preferences import ReadPreference

from service.mongo.connect import connect


async def test_primary_reads_and_majority_writes_are_pinned() -> None:
    client = connect(
        "mongodb://127.0.0.1:1/?readPreference=secondary&w=1&journal=false"
        "&retryWrites=false&serverSelectionTimeoutMS=250"
    )
    try:
        assert client.read_preference == ReadPreference.PRIMARY
        assert client.write_concern.document == {"w": "majority", "j": True}
        assert client.options.retry_writes and client.options.retry_reads
        # Timeouts are defaults only: the URI's own stays.
        assert client.options.server_selection_timeout == 0.25
    finally:
        await client.close()


async def test_default_timeouts_fit_the_lease() -> None:
    client = connect("mongodb://127.0.0.1:1/")
    try:
        assert client.options.server_selection_timeout == 10.0
        assert client.options.pool_options.connect_timeout == 5.0
    finally:
        await client.close()

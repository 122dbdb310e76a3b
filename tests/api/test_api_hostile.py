"""Hostile input (docs/security.md): each is refused with a clear error, nothing is stored
and the server stays up. Before: control characters were accepted in `name` (and printed raw
by `gatequeue ls`), `GET /static/app.js%00` answered 500, a client disconnecting mid-body was
logged as a 500 with a traceback, and a JSON body with duplicate keys was accepted.
"""

from __future__ import annotations

import asyncio
import re
import sys
import unicodedata

import pytest
import structlog
from aiohttp.test_utils import TestClient
from api_helpers import JSON, SEED_BODY, MakeApi, error_of, job_count

from service.api.errors import ApiError
from service.api.quota import SubmissionQuota
from service.cli.terminal import printable
from service.jobs.options import INVISIBLE, INVISIBLE_RANGES
from service.store import Store

NOT_IN_NAMES = (
    "must not contain control, format (bidirectional, zero-width) or invisible characters"
)


@pytest.mark.parametrize(
    "name", ["nul\x00", "esc\x1b[2J", "cr\r", "lf\n", "rtl\u202eabc", "del\x7f", "c1\x9b"]
)
async def test_control_characters_in_name_are_422(api: TestClient, store: Store, name: str) -> None:
    resp = await api.post("/jobs", json={**SEED_BODY, "name": name})
    error = await error_of(resp, 422, "validation_error")
    assert error["fields"] == [
        {"field": "name", "message": NOT_IN_NAMES, "type": "string_pattern_mismatch"}
    ]
    assert await job_count(store) == 0


CATEGORIES = {"Cf", "Zl", "Zp"}
INVISIBLE_NAMES = [
    "zero\u200bwidth",  # zero-width space
    "rlm\u200f",  # right-to-left mark
    "alm\u061c",  # Arabic letter mark
    "\ufeffbom",  # zero-width no-break space
    "line\u2028sep",
    "para\u2029sep",
    "tag\U000e0041\U000e007f",  # tag characters
    "\u115ffiller",  # Hangul choseong filler
    "\u3164",  # Hangul filler: a name that shows as blank
    "joiner\u2060",  # word joiner
]


@pytest.mark.parametrize("name", INVISIBLE_NAMES)
async def test_invisible_and_direction_characters_in_names_are_422(
    api: TestClient, store: Store, name: str
) -> None:
    """Issue 26: these were stored and printed raw by `gatequeue ls`. Refused in a job's
    name, a sweep's name and the names a sweep gives its runs; nothing is stored."""
    error = await error_of(await api.post("/jobs", json={**SEED_BODY, "name": name}), 422)
    assert error["fields"] == [
        {"field": "name", "message": NOT_IN_NAMES, "type": "string_pattern_mismatch"}
    ]
    sweep = {"base": SEED_BODY, "grid": {"seed": [1, 2]}}
    for body, field in [
        ({**sweep, "name": name}, "name"),
        ({**sweep, "base": {**SEED_BODY, "name": name}}, "base.name"),
        ({**sweep, "runs": [{"name": "ok"}, {"name": name}]}, "runs.1.name"),
    ]:
        error = await error_of(await api.post("/sweeps", json=body), 422)
        assert [f["field"] for f in error["fields"]] == [field], error
    assert printable(name) != name  # and the CLI escapes any stored before
    assert await job_count(store) == 0
    assert await store.sweeps.collection.count_documents({}) == 0


def test_the_refused_characters_are_every_format_character_and_separator() -> None:
    """`INVISIBLE_RANGES` covers Unicode's Cf, Zl and Zp (as this Python knows them) and the
    Hangul fillers, nothing else: a name of any other printable character is fine."""
    wanted = {c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in CATEGORIES}
    wanted |= {0x115F, 0x1160, 0x3164, 0xFFA0}
    listed = {c for first, last in INVISIBLE_RANGES for c in range(first, last + 1)}
    assert listed == wanted
    refused = re.compile("[" + INVISIBLE + "]")
    assert all(refused.fullmatch(chr(c)) for c in wanted)
    assert not refused.search("".join(chr(c) for c in range(0x20, 0x3000) if c not in wanted))


async def test_a_group_sum_tau_that_makes_the_loss_nan_is_422(
    api: TestClient, store: Store
) -> None:
    """Issue 26: `groupSumTau: 5e-324` was accepted and trained to a NaN loss."""
    for tau in (5e-324, 1e-30, 0.0009):
        error = await error_of(await api.post("/jobs", json={**SEED_BODY, "groupSumTau": tau}), 422)
        assert [f["field"] for f in error["fields"]] == ["groupSumTau"]
    assert (await api.post("/jobs", json={**SEED_BODY, "groupSumTau": 0.001})).status == 201
    assert await job_count(store) == 1


async def test_ordinary_names_are_fine(api: TestClient) -> None:
    resp = await api.post("/jobs", json={**SEED_BODY, "name": "Lernrate ½ · 学习\tsweep #3"})
    assert resp.status == 422  # a tab is a control character too
    resp = await api.post("/jobs", json={**SEED_BODY, "name": "Lernrate ½ · 学习 sweep #3"})
    assert resp.status == 201


@pytest.mark.parametrize(
    "path",
    [
        "/static/app.js%00",
        "/static/%00",
        "/static/..%2f..%2fservice%2fconfig.py",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/static/..\\..\\pyproject.toml",
        "/jobs/%00",
        "/jobs/..%2f..%2fetc%2fpasswd",
        "/jobs/665f1c2e9b1e8a3d4c2b1a00/artifacts/..%2f..%2fnetwork.json",
        "/jobs/665f1c2e9b1e8a3d4c2b1a00/artifacts/%00",
    ],
)
async def test_nul_and_traversal_paths_are_404(api: TestClient, path: str) -> None:
    resp = await api.get(path)
    assert resp.status == 404, (path, await resp.text())
    await error_of(resp, 404)
    assert (await api.get("/healthz")).status == 200


async def test_duplicate_json_keys_are_400(api: TestClient, store: Store) -> None:
    body = b'{"gates": "bad", "gateOptimizer": "softmax", "gates": 3332}'
    error = await error_of(await api.post("/jobs", data=body, headers=JSON), 400, "invalid_json")
    assert "duplicate key 'gates'" in error["message"]
    nested = b'{"gateOptimizer": "softmax", "name": "x", "name": "y"}'
    await error_of(await api.post("/jobs", data=nested, headers=JSON), 400, "invalid_json")
    assert await job_count(store) == 0


async def test_oversized_body_header_and_line_are_refused(api: TestClient, store: Store) -> None:
    big = b'{"name": "' + b"x" * (70 * 1024) + b'"}'
    await error_of(await api.post("/jobs", data=big, headers=JSON), 413)
    resp = await api.get("/jobs", headers={"X-Big": "y" * 20_000})
    assert resp.status == 400  # aiohttp's own answer to a header past max_field_size
    assert await job_count(store) == 0
    assert (await api.get("/healthz")).status == 200


async def test_a_client_that_disconnects_mid_body_is_499_without_a_traceback(
    api: TestClient, store: Store
) -> None:
    assert api.server.port is not None
    logged = asyncio.Event()

    def spy(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
        if event.get("event") == "request" and event.get("path") == "/jobs":
            logged.set()  # the access log line: the request was handled
        return event

    with structlog.testing.capture_logs(processors=[spy]) as logs:
        _, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
        writer.write(
            b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"gateOptimizer": "soft'
        )
        await writer.drain()
        writer.close()  # gone before the body is complete
        await writer.wait_closed()
        async with asyncio.timeout(10):
            await logged.wait()
    [entry] = [e for e in logs if e.get("event") == "request" and e.get("path") == "/jobs"]
    assert entry["status"] == 499
    assert not [e for e in logs if e.get("log_level") == "error" or "exc_info" in e]
    assert await job_count(store) == 0
    assert (await api.get("/healthz")).status == 200


async def test_submissions_past_the_rate_get_429_with_retry_after(
    make_api: MakeApi, store: Store
) -> None:
    api = await make_api(submit_rate_per_min=3)
    for _ in range(3):
        assert (await api.post("/jobs", json=SEED_BODY)).status == 201
    resp = await api.post("/jobs", json=SEED_BODY)
    error = await error_of(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1
    assert "3 jobs a minute" in error["message"]
    assert await job_count(store) == 3


async def test_pending_jobs_past_the_quota_get_429(make_api: MakeApi, store: Store) -> None:
    api = await make_api(max_pending=2)
    for _ in range(2):
        assert (await api.post("/jobs", json=SEED_BODY)).status == 201
    resp = await api.post("/jobs", json=SEED_BODY)
    await error_of(resp, 429, "too_many_pending")
    assert resp.headers["Retry-After"] == "60"
    assert await job_count(store) == 2


class _SlowCount:
    """The quota's view of the store, with a count that waits for the test's go: every
    submission of the test then arrives while one count is in flight."""

    def __init__(self, pending: int) -> None:
        self.pending = pending
        self.counts = 0
        self.go = asyncio.Event()

    async def pending_count(self, submitted_by: str | None) -> int:
        self.counts += 1
        await self.go.wait()
        return self.pending


async def test_concurrent_submissions_share_one_count_and_cannot_overrun_the_quota() -> None:
    """Twenty submissions at once against a quota of five, with three jobs Pending: one
    count for all of them, two admitted, eighteen 429s. When each request counted for
    itself, every one saw 3 and all twenty were let in."""
    jobs = _SlowCount(pending=3)
    quota = SubmissionQuota(jobs, rate_per_min=1000, max_pending=5)  # type: ignore[arg-type]
    tries = [asyncio.create_task(quota.admit("alice")) for _ in range(20)]
    await asyncio.sleep(0)  # every submission is waiting on the count now
    jobs.go.set()
    results = await asyncio.gather(*tries, return_exceptions=True)
    refused = [r for r in results if isinstance(r, ApiError)]
    assert len(results) - len(refused) == 2
    assert len(refused) == 18 and {r.code for r in refused} == {"too_many_pending"}
    assert jobs.counts == 1


async def test_a_failed_count_fails_its_waiters_and_the_next_submission_counts_again() -> None:
    class Down(_SlowCount):
        async def pending_count(self, submitted_by: str | None) -> int:
            self.counts += 1
            await self.go.wait()
            if self.counts == 1:
                raise ConnectionError("MongoDB is away")
            return self.pending

    jobs = Down(pending=0)
    quota = SubmissionQuota(jobs, rate_per_min=1000, max_pending=5)  # type: ignore[arg-type]
    tries = [asyncio.create_task(quota.admit("alice")) for _ in range(3)]
    await asyncio.sleep(0)
    jobs.go.set()
    results = await asyncio.gather(*tries, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    await quota.admit("alice")  # counted afresh, admitted
    assert jobs.counts == 2

"""`GET /usage`: what each user and sweep used of the queue (service.store.usage). An admin
sees everyone; any other token only itself, so a reader can follow their own use without
learning anyone else's."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from pydantic import Field, field_validator

from service.api.auth import principal_of
from service.api.errors import json_response
from service.api.keys import STORE
from service.api.routes_jobs import ERR_422_QUERY
from service.api.routing import Query, Reply, Route
from service.api.schemas import UsageReport
from service.tokens import Role


class UsageQuery(Query):
    since: datetime | None = Field(
        None,
        description="The period's start, ISO-8601 (`2026-01-01`, `2026-01-01T00:00:00Z`; "
        "without a zone: UTC). Jobs created since, or not finished by then, count; their "
        "Running time is clipped to it. Absent: all time.",
    )

    @field_validator("since")
    @classmethod
    def _utc(cls, since: datetime | None) -> datetime | None:
        """In UTC (none given: UTC); a time that has no UTC equivalent is a bad `since`."""
        if since is None:
            return None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        try:
            return since.astimezone(UTC)
        except OverflowError:
            raise ValueError("is outside the years 1 to 9999 in UTC") from None


async def usage(request: web.Request, query: UsageQuery) -> web.Response:
    principal = principal_of(request)
    since = query.since
    everyone = principal.may(Role.ADMIN)
    report = await request.app[STORE].usage.report(
        since=since, user=principal.name, only_user=not everyone
    )
    return json_response(report.to_json())


ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/usage", usage, "getUsage", "What each user and sweep used", query=UsageQuery,
        description=(
            "Per user and per sweep: jobs by status, slot-hours (Running time x slots, GPU "
            "and CPU apart) and the log and file bytes stored for their jobs, over the "
            "period from `since`. An admin sees every user; any other token only itself."
        ),
        replies=(Reply(200, "Usage by user and by sweep.", UsageReport), ERR_422_QUERY),
    ),
)  # fmt: skip

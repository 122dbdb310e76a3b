"""Checking a submission's webhooks before anything is stored: every `notify` URL a job or
sweep request names must be one the server may call (service.webhooks.targets), else the
request is a 422 `webhook_refused` naming each field, and nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from service.api.errors import ApiError
from service.jobs.notify import Notify
from service.webhooks.errors import WebhookRefused
from service.webhooks.targets import AllowList, check_url

ALLOW: web.AppKey[AllowList] = web.AppKey("webhook_allow", AllowList)


def _notify(value: Any) -> Notify | None:
    if isinstance(value, Notify):
        return value
    try:
        return Notify.model_validate(value)
    except ValidationError:
        return None  # the request's own validation names it


def sweep_notifies(spec: Any) -> Iterator[tuple[str, Notify]]:
    """Every `notify` a sweep request names: its own, its base's, its grid's and runs'."""
    named: list[tuple[str, Any]] = [
        ("notify", spec.notify),
        ("base.notify", spec.base.get("notify")),
    ]
    named += [(f"grid.notify.{i}", v) for i, v in enumerate(spec.grid.get("notify", []))]
    named += [(f"runs.{i}.notify", run.get("notify")) for i, run in enumerate(spec.runs)]
    if spec.random is not None and "notify" in spec.random.space:
        choices = getattr(spec.random.space["notify"], "choice", [])
        named += [(f"random.space.notify.choice.{i}", v) for i, v in enumerate(choices)]
    for field, value in named:
        notify = None if value is None else _notify(value)
        if notify is not None:
            yield field, notify


async def check_notifies(request: web.Request, named: Iterator[tuple[str, Notify]]) -> None:
    """422 `webhook_refused` unless every URL may be called (after DNS resolution)."""
    allow = request.app[ALLOW]
    problems: list[dict[str, str]] = []
    for field, notify in named:
        try:
            await check_url(allow, notify.url)
        except WebhookRefused as exc:
            problems.append(
                {"field": f"{field}.url", "message": str(exc), "type": "webhook_refused"}
            )
    if problems:
        raise ApiError(
            422, "webhook_refused", "; ".join(p["message"] for p in problems), fields=problems
        )

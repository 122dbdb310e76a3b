"""`notify`: a webhook of one job or sweep, `{"url", "events"}` (docs/webhooks.md).

The model checks the shape only (an http(s) URL, known events); whether the URL may be
called at all (the admin's allow-list, no private address after DNS) is decided by the API
at submission (service.webhooks.targets), where it can resolve names without blocking.
"""

from __future__ import annotations

import json
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

# What a job or a sweep may be notified of: how it ended, or `finished`, any end.
# A job or sweep ends once, so a hook gets one delivery per subject however many of its
# events match.
Event = Literal["finished", "succeeded", "failed", "cancelled"]
EVENTS: tuple[str, ...] = ("finished", "succeeded", "failed", "cancelled")
DEFAULT_EVENTS: tuple[str, ...] = ("finished",)
URL_MAX = 2048


class Notify(BaseModel):
    """A webhook: POST a signed JSON body to `url` when one of `events` happens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        max_length=URL_MAX,
        description="An http(s) URL whose host the server's GATEQUEUE_WEBHOOK_ALLOW admits; "
        "a Slack incoming-webhook URL (hooks.slack.com) gets Slack's message format.",
    )
    events: list[Event] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DEFAULT_EVENTS),  # type: ignore[arg-type]
        min_length=1,
        max_length=len(EVENTS),
        description="`finished` (any end), `succeeded`, `failed`, `cancelled`.",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry a user name or password")
        return url

    @field_serializer("url", when_used="json")
    def _shown(self, url: str) -> str:
        """The API shows a webhook's scheme and host only: a Slack URL's path is its secret,
        and every reader may read every job."""
        return redact(url)

    def wants(self, event: str) -> bool:
        return event in self.events or "finished" in self.events

    @classmethod
    def from_flag(cls, text: str) -> dict[str, object]:
        """`--notify URL` (every end) or `--notify '{"url": ..., "events": [...]}'`."""
        text = text.strip()
        if text.startswith("{"):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
        return {"url": text}


def redact(url: str) -> str:
    """A URL as the API shows it: scheme, host and port, never a path (also for one stored
    before its port was checked: a record that cannot be shown would take a listing down)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    bare = parts.path in ("", "/") and not parts.query and not parts.fragment
    return url if bare else f"{parts.scheme}://{host}{port}/…"

"""What a delivery sends: a JSON body (the event, the job's or sweep's summary, a link to
it on the page, the delivery id), or Slack's `{"text": ...}` for a Slack incoming-webhook
URL; and its signature, HMAC-SHA256 of the exact body bytes under
`GATEQUEUE_WEBHOOK_SECRET` (docs/webhooks.md, "Verifying a delivery").

The body is built once, when the delivery is recorded, and every try sends the same bytes:
a receiver that got a try whose answer was lost sees the same `deliveryId` again and drops
it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Gatequeue-Signature"  # "sha256=<hex>"
DELIVERY_HEADER = "X-Gatequeue-Delivery"
EVENT_HEADER = "X-Gatequeue-Event"
SLACK_HOSTS = ("hooks.slack.com",)
JSON_FORMAT = "json"
SLACK_FORMAT = "slack"


def format_of(url: str) -> str:
    """Slack's incoming webhooks take `{"text"}` only; every other URL our JSON."""
    host = (urlsplit(url).hostname or "").lower()
    return SLACK_FORMAT if host in SLACK_HOSTS else JSON_FORMAT


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does (and the tests): compare in constant time."""
    return hmac.compare_digest(signature(secret, body), header)


def link(base_url: str | None, kind: str, subject_id: str) -> str:
    path = f"/#/{kind}s/{subject_id}"
    return (base_url or "").rstrip("/") + path


def body(
    fmt: str, *, event: str, kind: str, summary: dict[str, Any], url: str, delivery_id: str
) -> bytes:
    if fmt == SLACK_FORMAT:
        return json.dumps({"text": slack_text(event, kind, summary, url)}).encode()
    return json.dumps(
        {"deliveryId": delivery_id, "event": event, kind: summary, "url": url},
        separators=(",", ":"),
    ).encode()


def _escape(text: str) -> str:
    """Slack's mrkdwn: &, < and > are its control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(event: str, kind: str, summary: dict[str, Any], url: str) -> str:
    name = summary.get("name") or summary["id"][-8:]
    status = summary.get("status", event)
    text = f"gatequeue: {kind} <{url}|{_escape(str(name))}> {_escape(str(status))}"
    if summary.get("submittedBy"):
        text += f" (by {_escape(str(summary['submittedBy']))})"
    if summary.get("error"):
        text += f": {_escape(str(summary['error'])[:300])}"
    counts = summary.get("counts")
    if counts:
        text += " · " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return text

"""What a browser could send from another site is refused (docs/security.md, "Cross-site").

A page of any origin can make the browser send simple requests (a form POST, a `no-cors`
fetch) to the API, and open WebSockets to it, carrying the user's cookies. So:

- every write must be `Content-Type: application/json`, which a browser sends cross-site
  only after a CORS preflight that this API never answers yes to;
- a write or a WebSocket handshake that carries an `Origin` must come from the API's own
  origin or one of `GATEQUEUE_ALLOWED_ORIGINS` (non-browser clients send no Origin);
- an open API (no token configured) on a loopback address answers only requests whose
  `Host` is a loopback name: otherwise a page on `evil.example` whose name the attacker
  points at 127.0.0.1 (DNS rebinding) would be "same-origin" with it.
"""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from service.api.errors import ApiError

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def origin_hostport(origin: str) -> str | None:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{host}:{port}".lower()


def request_hostport(request: web.Request) -> str:
    host = request.host.lower()
    if host.endswith("]") or ":" not in host.rsplit("]", 1)[-1]:
        port = 443 if request.secure else 80
        return f"{host}:{port}"
    return host


def check_origin(request: web.Request, allowed: tuple[str, ...]) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if origin.lower().rstrip("/") in allowed:
        return
    theirs = origin_hostport(origin)
    if theirs is not None and theirs == request_hostport(request):
        return
    raise ApiError(
        403,
        "origin_refused",
        f"requests from the origin {origin[:100]!r} are refused: only this API's own pages "
        "(and GATEQUEUE_ALLOWED_ORIGINS) may write to it or open its WebSockets",
    )


@functools.lru_cache(maxsize=256)  # a handful of Host values, asked on every request
def is_loopback_host(host: str) -> bool:
    name = host.lower()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    else:
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_host(request: web.Request, allowed: tuple[str, ...]) -> None:
    """For an open API on loopback: the Host must be loopback (or an allowed origin's)."""
    if is_loopback_host(request.host):
        return
    if any(origin_hostport(o) == request_hostport(request) for o in allowed):
        return
    raise ApiError(
        403,
        "host_refused",
        f"Host {request.host[:100]!r} is refused: an API without tokens answers only "
        "requests to 127.0.0.1 or localhost (set GATEQUEUE_API_TOKEN or a tokens file to "
        "serve other names)",
    )


def require_json(request: web.Request) -> None:
    """JSON only, and the header is required: a POST without Content-Type (or with a form
    type) is a CORS "simple request" any web page can send, while `application/json` makes
    browsers ask first (and we never say yes)."""
    if "Content-Type" not in request.headers:
        raise ApiError(
            415, "unsupported_media_type",
            "missing Content-Type; send 'Content-Type: application/json'",
        )  # fmt: skip
    mime = request.content_type
    if mime != "application/json" and not (
        mime.startswith("application/") and mime.endswith("+json")
    ):
        raise ApiError(
            415, "unsupported_media_type",
            f"Content-Type {mime!r} is not JSON; send 'Content-Type: application/json'",
        )  # fmt: skip


def require_media(request: web.Request, accepted: tuple[str, ...]) -> None:
    """A non-JSON write (a file upload) takes only `accepted` types, none of which a
    cross-site form can send without asking first (never `text/plain`, a form's types)."""
    mime = request.content_type if "Content-Type" in request.headers else None
    if mime not in accepted:
        raise ApiError(
            415, "unsupported_media_type",
            f"Content-Type {mime!r} is not accepted here; send one of {', '.join(accepted)}",
        )  # fmt: skip

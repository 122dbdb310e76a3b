"""The one error shape of the API, `{"error": {"code", "message", "fields"?}}`, for every
error: ours, aiohttp's own (404, 405, 413) and unexpected exceptions (500).

Clients and the web page then need a single code path for failures, and nothing of a
traceback ever reaches a client: the 500 body only points at the request id in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError, ClientPayloadError
from aiohttp.typedefs import Handler
from pymongo.errors import ConnectionFailure

from service.api.keys import REQUEST_ID

log = structlog.get_logger("service.api")

JSON_CONTENT_TYPE = "application/json"
# aiohttp refuses larger bodies with a 413 (`client_max_size`); a job request is < 1 KiB.
MAX_BODY_BYTES = 64 * 1024
# nginx's convention for "the client closed the connection before the answer".
CLIENT_CLOSED = 499

# Codes for statuses aiohttp raises itself (routing, body size) or that we raise bare.
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by handlers (and helpers like `auth.require_owner`) to answer with an error."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        fields: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})  # more members of `error` (e.g. `combination`)


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON; orjson is ~5x faster than the standard library on job documents,
    and every API response goes through here."""
    return orjson.dumps(data)


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Compact JSON; cheaper than `web.json_response`'s default separators on hot paths."""
    return web.Response(
        body=dumps(data), status=status, headers=headers, content_type=JSON_CONTENT_TYPE
    )


# What an error body echoes of a request is cut to these: a bad value is shown to say which
# one was meant, not stored, and must never make the error itself unanswerable.
MAX_ECHO_CHARS = 1000
MAX_ECHO_DEPTH = 8
MAX_ECHO_ITEMS = 100
_INT64 = (-(2**63), 2**64 - 1)  # what orjson encodes


def echo(value: Any, depth: int = 0) -> Any:
    """`value` made encodable and short, for an error body: strings cut and with lone
    surrogates escaped (`\\udfff`), integers past 64 bits and other types as text,
    containers past `MAX_ECHO_DEPTH` levels or `MAX_ECHO_ITEMS` items cut. Issue 26: a
    grid value of 10**30 or an unpicked `"\\udfff"` made the 422 that named it a 500."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return value
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping | list | tuple):
        if depth >= MAX_ECHO_DEPTH:
            return f"a {'object' if isinstance(value, Mapping) else 'list'} nested too deep"
        if isinstance(value, Mapping):
            items = list(value.items())[:MAX_ECHO_ITEMS]
            return {_text(str(k)): echo(v, depth + 1) for k, v in items}
        return [echo(v, depth + 1) for v in value[:MAX_ECHO_ITEMS]]
    return _text(str(value))


def _text(text: str) -> str:
    text = text[:MAX_ECHO_CHARS]
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()[:MAX_ECHO_CHARS]
    return text


def error_body(
    code: str,
    message: str,
    fields: list[dict[str, str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The error shape; everything in it passes through `echo`, so it always encodes."""
    err: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        err["fields"] = fields
    return {"error": echo({**err, **(extra or {})}, -1)}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    fields: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    return json_response(error_body(code, message, fields, extra), status=status, headers=headers)


def validation_error(fields: list[dict[str, str]]) -> ApiError:
    names = ", ".join(dict.fromkeys(f["field"] for f in fields))
    return ApiError(422, "validation_error", f"invalid fields: {names}", fields=fields)


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    status = exc.status
    code = STATUS_CODES.get(status, "error")
    if status == 413:
        message = f"request body too large; the limit is {MAX_BODY_BYTES} bytes"
    elif status == 404:
        message = "no such route"
    elif status == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"method not allowed; allowed: {allowed}" if allowed else "method not allowed"
    else:
        message = exc.reason
    # Keep headers that carry meaning (Allow on 405); drop aiohttp's text/plain ones.
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
    return error_response(status, code, message, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the error shape; inner to the access-log middleware so the
    access log records the status the client really got."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(
            exc.status, exc.code, exc.message, fields=exc.fields, headers=exc.headers,
            extra=exc.extra,
        )  # fmt: skip
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc)
    except asyncio.CancelledError:
        raise
    except (ConnectionResetError, ClientConnectionResetError, ClientPayloadError) as exc:
        # The client went away mid-request (mid-body, say): its problem, not a server error.
        log.info("client disconnected", method=request.method, path=request.path,
                 error=type(exc).__name__)  # fmt: skip
        return error_response(CLIENT_CLOSED, "client_closed", "the client closed the request")
    except ConnectionFailure as exc:
        # An unreachable database is an outage, not a bug: 503 tells clients to retry.
        log.warning("database unavailable", error=str(exc))
        return error_response(503, "database_unavailable", "the database is not reachable")
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        rid = request.get(REQUEST_ID, "")
        return error_response(
            500, "internal_error", f"internal server error; request id {rid}".strip()
        )


class SubscriptionDropped(Exception):
    """The subscriber fell too far behind; `reason` says by how much."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OpenApiRefused(RuntimeError):
    """An API without tokens would listen beyond loopback; the message says what to do."""


class Revoked(Exception):
    """The socket's token or session is gone (or no longer may read)."""


class Unsatisfiable(Exception):
    """The range asks for no byte of the file (416)."""


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key[:100]


class BodyTooLarge(Exception):
    """A streamed body passed its limit (or its Content-Length says it will)."""


class BodyCutOff(Exception):
    """The client went away (or sent less than its Content-Length) mid-body."""

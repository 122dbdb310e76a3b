"""Bearer-token check shared by the HTTP routes and the WebSocket routes.

One function, so every protected route (and the WebSocket routes added later) refuses in
the same way: 401, the error shape, and a `WWW-Authenticate` header.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from service.api.errors import ApiError
from service.api.keys import SETTINGS

WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="gatequeue"'}


def _matches(candidate: str, token: str) -> bool:
    # compare_digest on bytes: constant time, and no TypeError on non-ASCII input.
    return hmac.compare_digest(candidate.encode(), token.encode())


def check_token(request: web.Request, *, allow_query: bool = False) -> None:
    """Raise a 401 `ApiError` unless the request carries the configured API token.

    No token configured means the API is open. `allow_query=True` also accepts
    `?token=...`, for WebSocket routes only: browsers cannot set headers on a WebSocket
    handshake. Plain HTTP routes do not take it, so tokens stay out of ordinary URLs
    and access logs.
    """
    token = request.app[SETTINGS].api_token
    if not token:
        return
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and _matches(credentials.strip(), token):
            return
    elif allow_query:
        candidate = request.query.get("token")
        if candidate is not None and _matches(candidate, token):
            return
    message = (
        "missing API token: send 'Authorization: Bearer <token>'"
        if header is None
        else "invalid API token"
    )
    raise ApiError(401, "unauthorized", message, headers=WWW_AUTHENTICATE)

"""The web page's sign-in: a token traded once for a short-lived session cookie.

The page never keeps the token (not in `localStorage`, not in a WebSocket URL): it sends it
once to `POST /session`, which sets `gq_session` (HttpOnly: scripts cannot read it;
SameSite=Strict: no other site's request carries it; Secure over HTTPS) for 8 hours. A
session is bound to its token: its role is the token's current one, and rotating, demoting
or removing the token ends it (service.api.auth). Only the token makes a session: a session
cannot make another, so a stolen cookie dies with its session.
"""

from __future__ import annotations

from aiohttp import web

from service.api.auth import (
    AUTH,
    OPEN,
    SESSION_COOKIE,
    SESSION_TTL_S,
    WWW_AUTHENTICATE,
    principal_of,
)
from service.api.errors import ApiError, json_response
from service.api.keys import STORE
from service.api.routing import Reply, Route
from service.api.schemas import Whoami
from service.tokens import Role


def _whoami(name: str | None, role: Role | None, open_api: bool) -> dict[str, object]:
    return {
        "name": name,
        "role": role.label if role is not None else None,
        "authenticated": role is not None,
        "open": open_api,
    }


async def create_session(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if principal.via_session:
        raise ApiError(
            401,
            "unauthorized",
            "a session cannot start another: send the token in 'Authorization: Bearer <token>'",
            headers=WWW_AUTHENTICATE,
        )
    session_id, session = await request.app[STORE].sessions.create(
        principal.name, principal.token, SESSION_TTL_S
    )
    response = json_response(
        {**_whoami(principal.name, principal.role, request.app[AUTH].open),
         "expiresAt": session.expires_at.isoformat()},
        status=201,
    )  # fmt: skip
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    return response


async def end_session(request: web.Request) -> web.Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        await request.app[STORE].sessions.delete(session_id)
    response = json_response({"ended": bool(session_id)})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def whoami(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    if auth.open:
        return json_response(_whoami(OPEN.name, OPEN.role, True))
    principal = await auth.authenticate(request)
    if principal is None:
        return json_response(_whoami(None, None, False))
    return json_response(_whoami(principal.name, principal.role, False))


ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/session", create_session, "createSession",
        "Trade the bearer token for a session cookie (the web page's sign-in)",
        role=Role.READ,
        replies=(Reply(201, "Signed in; `gq_session` is set.", Whoami, headers=("Set-Cookie",)),),
    ),
    Route(
        "POST", "/session/end", end_session, "endSession", "Sign out: the session ends",
        role=None,
        replies=(Reply(200, "The cookie is cleared.", headers=("Set-Cookie",)),),
    ),
    Route(
        "GET", "/whoami", whoami, "whoami",
        "Who this request is signed in as, and whether the API needs a token at all",
        role=None,
        replies=(Reply(200, "The caller.", Whoami),),
    ),
)  # fmt: skip

"""Who is asking, and may they (docs/security.md).

A request is authenticated by `Authorization: Bearer <token>` (a named token of
`GATEQUEUE_TOKENS_FILE`, or `GATEQUEUE_API_TOKEN` as the admin) or by the web page's
session cookie. Each route declares the role it needs (service.api.routing); without any
token configured the API is open and everyone is an anonymous admin, which is safe only
because the API then also refuses what a browser could send it from another site
(service.api.origin) and `gatequeue serve` refuses to listen beyond loopback open.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from service import tokens
from service.api.errors import ApiError
from service.config import Settings
from service.store.sessions import SessionStore
from service.tokens import Role, TokenEntry

log = structlog.get_logger(__name__)

WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="gatequeue"'}
SESSION_COOKIE = "gq_session"
SESSION_TTL_S = 8 * 3600
RELOAD_EVERY_S = 2.0


@dataclass(frozen=True)
class Principal:
    """An authenticated caller; `name` is None in open mode (nobody is asked who they are)."""

    name: str | None
    role: Role

    def may(self, role: Role) -> bool:
        return self.role >= role


OPEN = Principal(None, Role.ADMIN)


def require_owner(principal: Principal, owner: str | None, what: str) -> None:
    """A submit token acts on its own jobs and sweeps only; another's needs admin (403)."""
    if principal.may(Role.ADMIN) or owner == principal.name:
        return
    kind = what.split(" ", 1)[0]
    raise ApiError(
        403,
        "forbidden",
        f"{what} was submitted by {owner or 'nobody named'}; cancelling another user's "
        f"{kind} needs an admin token",
    )


class Authenticator:
    """The tokens of one API process: the file's (re-read when it changes, so `gatequeue
    token add` and a rotated Kubernetes Secret take effect within seconds) and the env's."""

    def __init__(self, settings: Settings, sessions: SessionStore) -> None:
        self._file = settings.tokens_file
        self._sessions = sessions
        self._entries: list[TokenEntry] = []
        self._mtime: float | None = None
        if settings.api_token:
            self._env = [
                TokenEntry(tokens.ADMIN_FROM_ENV, Role.ADMIN, tokens.hash_token(settings.api_token))
            ]
        else:
            self._env = []
        self.open = not settings.auth_configured
        if self._file is not None:
            self._load()  # at start-up a broken file is an error, not an open API

    def _load(self) -> None:
        assert self._file is not None
        try:
            mtime = self._file.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and self._mtime is not None:
            return
        self._entries = tokens.read(self._file)
        self._mtime = mtime
        log.info("tokens loaded", file=str(self._file), tokens=len(self._entries))

    async def watch(self) -> None:
        """Re-read the file when it changes; a file broken meanwhile keeps the last good."""
        while self._file is not None:
            await asyncio.sleep(RELOAD_EVERY_S)
            try:
                await asyncio.to_thread(self._load)
            except tokens.TokenFileError as exc:
                log.error("tokens file not reloaded", error=str(exc))

    def names(self) -> set[str]:
        return {e.name for e in (*self._entries, *self._env)}

    def identify(self, token: str) -> Principal | None:
        entry = tokens.find([*self._entries, *self._env], token)
        return None if entry is None else Principal(entry.name, entry.role)

    async def authenticate(self, request: web.Request) -> Principal | None:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise ApiError(401, "unauthorized", "invalid API token", headers=WWW_AUTHENTICATE)
            principal = self.identify(credentials.strip())
            if principal is None:
                raise ApiError(401, "unauthorized", "invalid API token", headers=WWW_AUTHENTICATE)
            return principal
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            session = await self._sessions.get(session_id)
            # A session dies with its token: removing the name ends its sessions too.
            if session is not None and (session.name in self.names() or self.open):
                return Principal(session.name, Role(session.role))
        return None

    async def authorize(self, request: web.Request, role: Role) -> Principal:
        """The caller, if it may act as `role`: else 401 (who are you?) or 403 (not you)."""
        if self.open:
            return OPEN
        principal = await self.authenticate(request)
        if principal is None:
            raise ApiError(
                401,
                "unauthorized",
                "missing API token: send 'Authorization: Bearer <token>'",
                headers=WWW_AUTHENTICATE,
            )
        if not principal.may(role):
            raise ApiError(
                403,
                "forbidden",
                f"token {principal.name!r} has role {principal.role.label}; this needs "
                f"{role.label}",
            )
        return principal


AUTH: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)
# Per request: the caller the route was authorised for (a plain string before aiohttp 3.14).
PRINCIPAL: Any = (
    web.RequestKey("principal", Principal) if hasattr(web, "RequestKey") else "principal"
)


def principal_of(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, OPEN)  # type: ignore[no-any-return]


async def _watch_ctx(app: web.Application) -> object:
    task = asyncio.create_task(app[AUTH].watch(), name="tokens-watch")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup(app: web.Application, settings: Settings, sessions: SessionStore) -> None:
    app[AUTH] = Authenticator(settings, sessions)
    app.cleanup_ctx.append(_watch_ctx)  # type: ignore[arg-type]

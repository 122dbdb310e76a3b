"""Who is asking, and may they (docs/security.md).

A request is authenticated by `Authorization: Bearer <token>` (a named token of
`GATEQUEUE_TOKENS_FILE`, or `GATEQUEUE_API_TOKEN` as the admin) or by the web page's
session cookie. Each route declares the role it needs (service.api.routing); without any
token configured the API is open and everyone is an anonymous admin, which is safe only
because the API then also refuses what a browser could send it from another site
(service.api.origin) and `gatequeue serve` refuses to listen beyond loopback open.
Tokens are compared in constant time and never logged.

A session is bound to the token it was made from (by a fingerprint of the token's hash), not
to a name and a role: rotating, demoting or removing the token ends its sessions at once,
and a session's role is always its token's current one (docs/security.md, "Sessions follow
their token").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field, replace
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
    """An authenticated caller; `name` is None in open mode (nobody is asked who they are).

    `token` is the fingerprint of the token it was authenticated with (None in open mode);
    `via_session` says whether that was through a session cookie rather than the token;
    `generation` is the tokens' generation it was checked against (Authenticator).
    """

    name: str | None
    role: Role
    token: str | None = None
    via_session: bool = False
    generation: int = field(default=0, compare=False)

    def may(self, role: Role) -> bool:
        return self.role >= role


OPEN = Principal(None, Role.ADMIN)


def require_owner(
    principal: Principal, owner: str | None, what: str, action: str = "cancelling"
) -> None:
    """A submit token acts on its own jobs and sweeps only; another's needs admin (403)."""
    if principal.may(Role.ADMIN) or owner == principal.name:
        return
    kind = what.split(" ", 1)[0]
    raise ApiError(
        403,
        "forbidden",
        f"{what} was submitted by {owner or 'nobody named'}; {action} another user's "
        f"{kind} needs an admin token",
    )


class Authenticator:
    """The tokens of one API process: the file's (re-read when it changes, so `gatequeue
    token add` and a rotated Kubernetes Secret take effect within seconds) and the env's.

    `generation` counts the changes of the tokens seen; open WebSockets wait on
    `changed` to re-check who they were opened by (service.api.ws).
    """

    def __init__(self, settings: Settings, sessions: SessionStore) -> None:
        self._file = settings.tokens_file
        self._sessions = sessions
        self._entries: list[TokenEntry] = []
        self._mtime: float | None = None
        self.generation = 0
        self._changed = asyncio.Condition()
        if settings.api_token:
            self._env = [
                TokenEntry(tokens.ADMIN_FROM_ENV, Role.ADMIN, tokens.hash_token(settings.api_token))
            ]
        else:
            self._env = []
        self.open = not settings.auth_configured
        if self._file is not None:
            self._load()  # at start-up a broken file is an error, not an open API

    def _load(self) -> bool:
        """Re-read the file if it changed; whether it did."""
        assert self._file is not None
        try:
            mtime = self._file.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and self._mtime is not None:
            return False
        self._entries = tokens.read(self._file)
        self._mtime = mtime
        log.info("tokens loaded", file=str(self._file), tokens=len(self._entries))
        return True

    async def reload(self) -> None:
        """What the watcher does when the file may have changed: take the new tokens, delete
        the sessions of every token that went (removed, or rotated: its hash changed) and
        wake the open WebSockets, which re-check their principal."""
        if self._file is None:
            return
        before = self._fingerprints()
        if not await asyncio.to_thread(self._load):
            return
        gone = before - self._fingerprints()
        async with self._changed:
            self.generation += 1
            self._changed.notify_all()
        if gone:
            # Only tokens this process saw go: another replica may know newer ones already.
            deleted = await self._sessions.delete_of_tokens(gone)
            log.info("sessions of removed tokens deleted", tokens=len(gone), sessions=deleted)

    async def changed(self, generation: int) -> None:
        """Until the tokens differ from those of `generation`."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.generation != generation)

    async def watch(self) -> None:
        """Re-read the file when it changes; a file broken meanwhile keeps the last good."""
        while self._file is not None:
            await asyncio.sleep(RELOAD_EVERY_S)
            try:
                await self.reload()
            except tokens.TokenFileError as exc:
                log.error("tokens file not reloaded", error=str(exc))
            except Exception:  # MongoDB down: the sessions are refused anyway (authenticate)
                log.exception("sessions of removed tokens not deleted")

    def _all(self) -> list[TokenEntry]:
        return [*self._entries, *self._env]

    def _fingerprints(self) -> set[str]:
        return {fingerprint(e) for e in self._all()}

    def identify(self, token: str) -> Principal | None:
        entry = tokens.find(self._all(), token)
        return None if entry is None else Principal(entry.name, entry.role, fingerprint(entry))

    def _of_session(self, name: str | None, token: str | None) -> Principal | None:
        """The principal of a session made from the token `token` (a fingerprint) of `name`,
        with that token's role now; None once the token was rotated or removed."""
        for entry in self._all():
            if entry.name == name and token is not None and fingerprint(entry) == token:
                return Principal(entry.name, entry.role, token, via_session=True)
        return None

    async def authenticate(self, request: web.Request) -> Principal | None:
        generation = self.generation  # before any await: a change meanwhile is re-checked
        principal = await self._authenticate(request)
        return None if principal is None else replace(principal, generation=generation)

    async def _authenticate(self, request: web.Request) -> Principal | None:
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
            if session is not None:
                return self._of_session(session.name, session.token)
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


def fingerprint(entry: TokenEntry) -> str:
    """What a session keeps of its token: a digest of the token's hash (so the `sessions`
    collection does not even hold the tokens file's hashes), which changes when the token is
    rotated."""
    return hashlib.sha256(entry.hash.encode()).hexdigest()


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

"""Each route is declared once, as a `Route`: method, path, handler, its query model, its
request body model and every response it can give. The aiohttp router and the OpenAPI
document (service.api.openapi) are both built from these declarations, so a route cannot
exist undocumented, nor a parameter be parsed differently from how it is documented.

Query parameters are validated by the route's pydantic model (lax, since a query string
only has strings) and a bad one is a 422 of the API's one error shape, naming each field.
A handler with a query model receives the parsed model as its second argument. The token
of a protected route is checked here, before anything else.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, get_origin

from aiohttp import web
from bson import ObjectId
from pydantic import BaseModel, ConfigDict, ValidationError

from service.api.auth import AUTH, PRINCIPAL
from service.api.errors import ApiError, validation_error
from service.api.origin import check_host, check_origin, require_json, require_media
from service.jobs.request import field_errors
from service.store.jobs import parse_job_id
from service.tokens import Role

Handler = Callable[..., Awaitable[web.StreamResponse]]

JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    """One response a route may give: its status, what it means, and its body."""

    status: int
    description: str
    model: type[BaseModel] | str | None = None  # a model, or a schema name of components
    content_type: str = JSON
    headers: tuple[str, ...] = ()  # documented response headers besides X-Request-ID


@dataclass(frozen=True)
class Param:
    """A path or header parameter (query parameters come from the query model)."""

    name: str
    where: str  # "path" | "header"
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class Route:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    replies: tuple[Reply, ...]
    description: str = ""
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_examples: dict[str, Any] | None = None
    params: tuple[Param, ...] = ()
    # The role a caller needs (service.api.auth); None: public (no token, no database).
    role: Role | None = Role.READ
    websocket: bool = False
    # A POST whose body is not JSON (a file upload): the media types it takes. None: JSON.
    content_types: tuple[str, ...] | None = None

    @property
    def protected(self) -> bool:
        return self.role is not None

    @property
    def checks_origin(self) -> bool:
        """Writes and WebSocket handshakes: what another site's page could make a browser
        send (service.api.origin)."""
        return self.method not in ("GET", "HEAD") or self.websocket

    @functools.cached_property  # asked of every response
    def statuses(self) -> frozenset[int]:
        """Every status this route documents, the common ones included."""
        common = {500}
        if self.protected:
            common |= {401, 403, 429, 503} if self.method == "POST" else {401, 403, 503}
        if self.checks_origin:
            common.add(403)
        if self.method == "POST":
            common.add(415)
        return frozenset({r.status for r in self.replies} | common)


class Query(BaseModel):
    """Base of query models: strings become numbers where a field says so; parameters a
    route does not know are ignored, as browsers and proxies add their own."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


@dataclass(frozen=True)
class Guard:
    """The app's cross-site settings: `host_check` for an open API on loopback."""

    allowed_origins: tuple[str, ...] = ()
    host_check: bool = False


GUARD: web.AppKey[Guard] = web.AppKey("guard", Guard)
ROUTE: web.AppKey[dict[Handler, Route]] = web.AppKey("routes", dict)
# Statuses a route answered without documenting them: tests assert there are none.
UNDOCUMENTED: web.AppKey[list[tuple[str, str, int]]] = web.AppKey("undocumented", list)


def parse_query(model: type[BaseModel], request: web.Request) -> BaseModel:
    """The query string through `model`; list fields take every value (repeated or
    comma-separated), others the first."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in request.query:
            continue
        if get_origin(info.annotation) is list:  # declared `list[str]`, never optional
            values[key] = [v for raw in request.query.getall(key) for v in raw.split(",") if v]
        else:
            values[key] = request.query[key]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise validation_error(field_errors(exc)) from None


def _bind(route: Route) -> Handler:
    """The aiohttp handler of a route: the checks of docs/security.md first (the Host of an
    open API, the Origin of a write or a WebSocket, the caller's role: before anything is
    parsed, so a refused request learns nothing about its parameters), the JSON content type
    of a write, then the query model."""
    query_model = route.query

    async def handler(request: web.Request) -> web.StreamResponse:
        guard = request.app[GUARD]
        if guard.host_check:
            check_host(request, guard.allowed_origins)
        if route.checks_origin:
            check_origin(request, guard.allowed_origins)
        if route.role is not None:
            request[PRINCIPAL] = await request.app[AUTH].authorize(request, route.role)
        if route.method == "POST":
            if route.content_types is None:
                require_json(request)
            else:
                require_media(request, route.content_types)
        if query_model is None:
            return await route.handler(request)
        return await route.handler(request, parse_query(query_model, request))

    handler.__name__ = route.handler.__name__
    return handler


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    """Register `routes` with the app's router (and remember them for the middleware)."""
    if ROUTE not in app:
        app[ROUTE] = {}
        app[UNDOCUMENTED] = []
    for route in routes:
        bound = _bind(route)
        app[ROUTE][bound] = route
        app.router.add_route(route.method, route.path, bound)


def route_of(request: web.Request) -> Route | None:
    table = request.app.get(ROUTE)
    if table is None:
        return None
    return table.get(request.match_info.handler)  # type: ignore[arg-type]


def note_status(request: web.Request, status: int) -> None:
    """Remember a status the matched route does not document (the middleware calls it)."""
    route = route_of(request)
    if route is not None and status not in route.statuses and status != 499:
        request.app[UNDOCUMENTED].append((route.method, route.path, status))


def all_routes(modules: Sequence[Any]) -> list[Route]:
    return [route for module in modules for route in module.ROUTES]


# A record id as a query parameter (`after`, `sweep`) spells it; a path's `{id}` is read by
# `path_id`.
ID_PATTERN = "^[0-9a-fA-F]{24}$"


def path_id(request: web.Request, kind: str) -> ObjectId:
    """The `{id}` of the path. A malformed id is an unknown one: 404, the same as a
    well-formed id nobody has."""
    raw = request.match_info["id"]
    oid = parse_job_id(raw) if len(raw) == 24 else None
    if oid is None:
        raise not_found(kind, raw)
    return oid


def not_found(kind: str, raw: object) -> ApiError:
    """404 for an unknown (or malformed: the same to a client) id."""
    return ApiError(404, f"{kind}_not_found", f"no {kind} with id {str(raw)[:64]!r}")

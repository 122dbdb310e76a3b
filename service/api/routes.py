"""Every route module of the API, in order, and the routes they declare: a leaf that the app
(its router) and the OpenAPI document both read, so neither imports the other.

Order matters only for overlapping paths; later modules (WebSockets, the web page) append.
"""

from __future__ import annotations

from types import ModuleType

from service.api import (
    routes_datasets,
    routes_health,
    routes_jobs,
    routes_session,
    routes_sweeps,
    routes_usage,
    routes_web,
    routes_webhooks,
    ws,
)
from service.api.routing import Route, all_routes

ROUTE_MODULES: list[ModuleType] = [
    routes_health, routes_jobs, routes_sweeps, routes_datasets, routes_usage, routes_session,
    ws, routes_webhooks, routes_web,
]  # fmt: skip
ROUTES: tuple[Route, ...] = tuple(all_routes(ROUTE_MODULES))

"""The aiohttp HTTP API (`gatequeue serve`); see `service.api.app`."""

from __future__ import annotations

from service.api.app import create_app, serve
from service.api.routes import ROUTE_MODULES

__all__ = ["ROUTE_MODULES", "create_app", "serve"]

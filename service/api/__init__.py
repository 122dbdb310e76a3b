"""The aiohttp HTTP API (`gatequeue serve`); see `service.api.app`."""

from __future__ import annotations

from service.api.app import ROUTE_MODULES, create_app, serve

__all__ = ["ROUTE_MODULES", "create_app", "serve"]

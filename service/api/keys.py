"""Typed keys for the objects the whole application shares.

Route modules (the WebSocket module among them) read what they need from the app
through these keys instead of importing globals, so many apps can live in one process (the
tests build one per test) without sharing state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from service.api.prom import ApiMetrics
from service.config import Settings
from service.store import Store

if TYPE_CHECKING:  # the quota's module reports errors through service.api.errors
    from service.api.capacity import SlotCache
    from service.api.quota import SubmissionQuota
    from service.jobs.retention import Retention
    from service.webhooks.dispatcher import Dispatcher

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
STORE: web.AppKey[Store] = web.AppKey("store", Store)
METRICS: web.AppKey[ApiMetrics] = web.AppKey("metrics", ApiMetrics)
# The OpenAPI document, rendered once per app: it depends only on the code.
OPENAPI_BODY: web.AppKey[bytes] = web.AppKey("openapi_body", bytes)
# Seconds /readyz waits for MongoDB to answer a ping.
READY_TIMEOUT_S: web.AppKey[float] = web.AppKey("ready_timeout_s", float)
# Submissions per token (jobs and sweeps) and the live workers' slots (memory admission).
QUOTA: web.AppKey[SubmissionQuota] = web.AppKey("quota")
SLOTS: web.AppKey[SlotCache] = web.AppKey("slots")
# This replica's retention passes (service.jobs.retention), started by routes_jobs.setup.
RETENTION: web.AppKey[Retention] = web.AppKey("retention")
# This replica's webhook sender (service.webhooks.dispatcher), where webhooks are on.
WEBHOOKS: web.AppKey[Dispatcher] = web.AppKey("webhooks")

# Per-request: the request id the middleware picked. `web.RequestKey` exists from aiohttp
# 3.14 on (which warns about plain string keys); older versions take the string.
REQUEST_ID: Any = web.RequestKey("request_id", str) if hasattr(web, "RequestKey") else "request_id"

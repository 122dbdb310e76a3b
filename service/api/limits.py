"""Bounds of the API's parameters, shared by the handlers and the OpenAPI document."""

from __future__ import annotations

# GET /jobs?limit=: enforced by the store, where the query is made.
from service.store.jobs import MAX_LIST_LIMIT as MAX_LIST_LIMIT

DEFAULT_LIST_LIMIT = 50
MAX_LOG_LIMIT = 10_000  # GET /jobs/{id}/logs?limit= (lines)
DEFAULT_LOG_LIMIT = 1_000
IDEMPOTENCY_KEY_MAX = 200  # characters
READY_TIMEOUT_S = 2.0  # /readyz: how long a MongoDB ping may take
MAX_SEQ = 999_999_999  # `from` of the log routes

"""Bounds of the API's parameters, shared by the handlers and the OpenAPI document."""

from __future__ import annotations

MAX_LIST_LIMIT = 200  # GET /jobs?limit=
DEFAULT_LIST_LIMIT = 50
MAX_LOG_LIMIT = 10_000  # GET /jobs/{id}/logs?limit= (lines)
DEFAULT_LOG_LIMIT = 1_000
IDEMPOTENCY_KEY_MAX = 200  # characters
READY_TIMEOUT_S = 2.0  # /readyz: how long a MongoDB ping may take
MAX_SEQ = 999_999_999  # `from` of the log routes

"""Every environment variable gatequeue reads, in one place.

Services and the CLI build one `Settings` at start-up and pass it down, so no module reads
`os.environ` on its own and tests can build settings explicitly.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from service.errors import ConfigError
from service.jobs.notify import Notify

DEFAULT_DB = "gatequeue"
DEFAULT_LEASE_S = 30.0
DEFAULT_API_PORT = 8080
DEFAULT_DATA_DIR = Path(".gatequeue") / "data"
# Per token, across the API processes' own counts (docs/security.md, "Rate limits").
DEFAULT_SUBMIT_RATE_PER_MIN = 600
DEFAULT_MAX_PENDING = 10_000
DEFAULT_MAX_SWEEP = 1000  # jobs in one POST /sweeps (docs/sweeps.md)
# How long an Idempotency-Key is remembered (docs/security.md, "Idempotency keys").
DEFAULT_IDEMPOTENCY_TTL_S = 24 * 3600.0
# The API's connections (docs/security.md, "Connections").
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_KEEPALIVE_TIMEOUT_S = 75.0
DEFAULT_MAX_CONNECTIONS = 1000  # lowered where the descriptor limit leaves less
DEFAULT_MAX_WEBSOCKETS = 500
DEFAULT_MAX_WEBSOCKETS_PER_USER = 50
# Retention (docs/design.md, "Deleting and retention"): logs of finished jobs, and whole
# Failed or Cancelled jobs, older than this many days are removed.
DEFAULT_RETAIN_LOGS_DAYS = 90.0
DEFAULT_RETAIN_FAILED_DAYS = 30.0
# Data sets (docs/datasets.md): the largest upload, and what a worker's cache keeps.
DEFAULT_MAX_DATASET = 2 << 30
DEFAULT_DATA_CACHE = 20 << 30


@dataclass(frozen=True)
class Settings:
    mongodb_uri: str | None = None
    db_name: str = DEFAULT_DB
    api_token: str | None = None
    gpus: tuple[str, ...] | None = None  # None: detect at worker start
    lease_s: float = DEFAULT_LEASE_S
    data_dir: Path = DEFAULT_DATA_DIR
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    heartbeat_file: Path | None = None
    # None: host name and slots. Set it where host names change on restart (a Deployment's
    # pods) but the worker should find its change-stream resume token again.
    worker_id: str | None = None
    tokens_file: Path | None = None
    allowed_origins: tuple[str, ...] = ()
    submit_rate_per_min: int = DEFAULT_SUBMIT_RATE_PER_MIN
    max_pending: int = DEFAULT_MAX_PENDING
    max_sweep: int = DEFAULT_MAX_SWEEP
    # Bytes a run may use in each of this worker's slots; None: found out (docs/worker.md).
    slot_memory: int | None = None
    idempotency_ttl_s: float = DEFAULT_IDEMPOTENCY_TTL_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S
    # None: DEFAULT_MAX_CONNECTIONS, or less where the descriptor limit leaves less.
    max_connections: int | None = None
    max_websockets: int = DEFAULT_MAX_WEBSOCKETS
    max_websockets_per_user: int = DEFAULT_MAX_WEBSOCKETS_PER_USER
    retain_logs_days: float = DEFAULT_RETAIN_LOGS_DAYS
    retain_failed_days: float = DEFAULT_RETAIN_FAILED_DAYS
    max_dataset: int = DEFAULT_MAX_DATASET
    data_cache: int = DEFAULT_DATA_CACHE
    # Webhooks (docs/webhooks.md): every job's and sweep's hooks, the HMAC key of the
    # signature, and the hosts a hook may call (empty: webhooks are off).
    webhooks: tuple[Notify, ...] = ()
    webhook_secret: str | None = None
    webhook_allow: tuple[str, ...] = ()
    # Each worker slot forks its runs from a warm trainer (docs/worker.md, "Warm starts").
    warm_start: bool = True

    @property
    def auth_configured(self) -> bool:
        """Whether the API needs a token: a tokens file or GATEQUEUE_API_TOKEN."""
        return self.api_token is not None or self.tokens_file is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            mongodb_uri=env.get("MONGODB_URI") or None,
            db_name=env.get("GATEQUEUE_DB") or DEFAULT_DB,
            api_token=env.get("GATEQUEUE_API_TOKEN") or None,
            gpus=parse_gpus(env.get("GATEQUEUE_GPUS")),
            lease_s=_parse_positive_float(
                "GATEQUEUE_LEASE_S", env.get("GATEQUEUE_LEASE_S"), DEFAULT_LEASE_S
            ),
            data_dir=Path(env.get("GATEQUEUE_DATA_DIR") or DEFAULT_DATA_DIR),
            log_format=_parse_choice(
                "GATEQUEUE_LOG_FORMAT",
                env.get("GATEQUEUE_LOG_FORMAT"),
                ("auto", "json", "console"),
                "auto",
            ),
            log_level=(env.get("GATEQUEUE_LOG_LEVEL") or "info").lower(),
            heartbeat_file=Path(env["GATEQUEUE_HEARTBEAT_FILE"])
            if env.get("GATEQUEUE_HEARTBEAT_FILE")
            else None,
            worker_id=env.get("GATEQUEUE_WORKER_ID") or None,
            tokens_file=Path(env["GATEQUEUE_TOKENS_FILE"])
            if env.get("GATEQUEUE_TOKENS_FILE")
            else None,
            allowed_origins=parse_origins(env.get("GATEQUEUE_ALLOWED_ORIGINS")),
            submit_rate_per_min=_parse_count(
                "GATEQUEUE_SUBMIT_RATE", env.get("GATEQUEUE_SUBMIT_RATE"),
                DEFAULT_SUBMIT_RATE_PER_MIN,
            ),
            max_pending=_parse_count(
                "GATEQUEUE_MAX_PENDING", env.get("GATEQUEUE_MAX_PENDING"), DEFAULT_MAX_PENDING
            ),
            max_sweep=_parse_count(
                "GATEQUEUE_MAX_SWEEP", env.get("GATEQUEUE_MAX_SWEEP"), DEFAULT_MAX_SWEEP
            ),
            slot_memory=parse_bytes("GATEQUEUE_SLOT_MEMORY", env.get("GATEQUEUE_SLOT_MEMORY")),
            idempotency_ttl_s=_parse_positive_float(
                "GATEQUEUE_IDEMPOTENCY_TTL_S", env.get("GATEQUEUE_IDEMPOTENCY_TTL_S"),
                DEFAULT_IDEMPOTENCY_TTL_S,
            ),
            header_timeout_s=_parse_positive_float(
                "GATEQUEUE_HEADER_TIMEOUT_S", env.get("GATEQUEUE_HEADER_TIMEOUT_S"),
                DEFAULT_HEADER_TIMEOUT_S,
            ),
            body_timeout_s=_parse_positive_float(
                "GATEQUEUE_BODY_TIMEOUT_S", env.get("GATEQUEUE_BODY_TIMEOUT_S"),
                DEFAULT_BODY_TIMEOUT_S,
            ),
            keepalive_timeout_s=_parse_positive_float(
                "GATEQUEUE_KEEPALIVE_TIMEOUT_S", env.get("GATEQUEUE_KEEPALIVE_TIMEOUT_S"),
                DEFAULT_KEEPALIVE_TIMEOUT_S,
            ),
            max_connections=_parse_count(
                "GATEQUEUE_MAX_CONNECTIONS", env.get("GATEQUEUE_MAX_CONNECTIONS"), None
            ),
            max_websockets=_parse_count(
                "GATEQUEUE_MAX_WEBSOCKETS", env.get("GATEQUEUE_MAX_WEBSOCKETS"),
                DEFAULT_MAX_WEBSOCKETS,
            ),
            max_websockets_per_user=_parse_count(
                "GATEQUEUE_MAX_WEBSOCKETS_PER_USER", env.get("GATEQUEUE_MAX_WEBSOCKETS_PER_USER"),
                DEFAULT_MAX_WEBSOCKETS_PER_USER,
            ),
            retain_logs_days=_parse_positive_float(
                "GATEQUEUE_RETAIN_LOGS_DAYS", env.get("GATEQUEUE_RETAIN_LOGS_DAYS"),
                DEFAULT_RETAIN_LOGS_DAYS, unit="days",
            ),
            retain_failed_days=_parse_positive_float(
                "GATEQUEUE_RETAIN_FAILED_DAYS", env.get("GATEQUEUE_RETAIN_FAILED_DAYS"),
                DEFAULT_RETAIN_FAILED_DAYS, unit="days",
            ),
            max_dataset=parse_bytes("GATEQUEUE_MAX_DATASET", env.get("GATEQUEUE_MAX_DATASET"))
            or DEFAULT_MAX_DATASET,
            data_cache=parse_bytes("GATEQUEUE_DATA_CACHE", env.get("GATEQUEUE_DATA_CACHE"))
            or DEFAULT_DATA_CACHE,
            webhooks=parse_webhooks(env.get("GATEQUEUE_WEBHOOKS")),
            webhook_secret=env.get("GATEQUEUE_WEBHOOK_SECRET") or None,
            webhook_allow=parse_allow(env.get("GATEQUEUE_WEBHOOK_ALLOW")),
            warm_start=_parse_switch("GATEQUEUE_WARM_START", env.get("GATEQUEUE_WARM_START"), True),
        )  # fmt: skip


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the process environment: what a worker hands on to its trainers (their
    PATH, CUDA_VISIBLE_DEVICES, the variables of trainer/environment.py) and where it
    looks for visible GPUs."""
    return dict(os.environ if env is None else env)


def client_api(env: Mapping[str, str] | None = None) -> str | None:
    """`GATEQUEUE_API`: the API the CLI talks to, when set."""
    env = os.environ if env is None else env
    return env.get("GATEQUEUE_API") or None


def client_token(env: Mapping[str, str] | None = None) -> str | None:
    """`GATEQUEUE_API_TOKEN`, the token a client sends when it is given none."""
    env = os.environ if env is None else env
    return env.get("GATEQUEUE_API_TOKEN") or None


def cache_home(env: Mapping[str, str] | None = None) -> Path:
    """`XDG_CACHE_HOME`, else ~/.cache: where built tools (the embedded server) are kept."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


def parse_gpus(raw: str | None) -> tuple[str, ...] | None:
    """`GATEQUEUE_GPUS` is either a count ("2") or a list of device ids ("0,3") or "cpu".

    A count means devices 0..n-1; "cpu" (or "0") means one CPU slot, which is what a
    machine without CUDA gets by default.
    """
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if raw.lower() == "cpu" or raw == "0":
        return ("cpu",)
    if raw.isdigit():
        return tuple(str(i) for i in range(int(raw)))
    parts = tuple(p.strip() for p in raw.split(","))
    if not all(p.isdigit() for p in parts):
        raise ConfigError(
            f"GATEQUEUE_GPUS={raw!r}: expected a count (2), device ids (0,3) or 'cpu'"
        )
    return parts


def parse_origins(raw: str | None) -> tuple[str, ...]:
    """`GATEQUEUE_ALLOWED_ORIGINS`: comma-separated origins (`https://queue.example.com`)
    whose pages may open the API's WebSockets and send it writes besides its own."""
    if not raw or not raw.strip():
        return ()
    out = []
    for part in raw.split(","):
        origin = part.strip().rstrip("/")
        if not origin:
            continue
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin):
            raise ConfigError(
                f"GATEQUEUE_ALLOWED_ORIGINS: {origin!r} is not an origin "
                "(scheme://host[:port], e.g. https://queue.example.com)"
            )
        out.append(origin.lower())
    return tuple(out)


def parse_webhooks(raw: str | None) -> tuple[Notify, ...]:
    """`GATEQUEUE_WEBHOOKS`: hooks called for every job and sweep. Either comma-separated
    URLs (each told of every end), or a JSON list of `{"url", "events"}` objects."""
    if not raw or not raw.strip():
        return ()
    raw = raw.strip()
    try:
        if raw.startswith("["):
            items = json.loads(raw)
            if not isinstance(items, list):
                raise ValueError("expected a JSON list")
        else:
            items = [{"url": url.strip()} for url in raw.split(",") if url.strip()]
        return tuple(Notify.model_validate(item) for item in items)
    except ValueError as exc:  # pydantic's ValidationError and JSON's errors are ValueErrors
        raise ConfigError(
            f"GATEQUEUE_WEBHOOKS: {exc}; expected URLs separated by commas, or a JSON list "
            'of {"url": ..., "events": [...]}'
        ) from None


_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_HOST_PATTERN = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*|\*")


def parse_allow(raw: str | None) -> tuple[str, ...]:
    """`GATEQUEUE_WEBHOOK_ALLOW`: comma-separated host patterns a webhook may call
    (`hooks.slack.com`, `*.example.com`, `*`), and addresses or networks (`10.0.0.0/8`,
    `127.0.0.1`) that a hook may reach although private or loopback (docs/webhooks.md)."""
    if not raw or not raw.strip():
        return ()
    out = []
    for part in raw.split(","):
        pattern = part.strip().lower()
        if not pattern:
            continue
        try:
            ipaddress.ip_network(pattern.strip("[]"), strict=False)
        except ValueError:
            if not _HOST_PATTERN.fullmatch(pattern):
                raise ConfigError(
                    f"GATEQUEUE_WEBHOOK_ALLOW: {pattern!r} is neither a host pattern "
                    "(hooks.slack.com, *.example.com) nor an address or network (10.0.0.0/8)"
                ) from None
        out.append(pattern)
    return tuple(out)


_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}  # fmt: skip


def parse_bytes(name: str, raw: str | None) -> int | None:
    """`16GiB`, `16G`, `16gb`, `17179869184`: a size in bytes (None when unset)."""
    if raw is None or raw.strip() == "":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", raw, re.IGNORECASE)
    if not match:
        raise ConfigError(f"{name}={raw!r}: expected a size such as 16GiB, 16G or 17179869184")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if value < 1:
        raise ConfigError(f"{name}={raw!r}: must be at least one byte")
    return int(value)


@overload
def _parse_count(name: str, raw: str | None, default: int) -> int: ...


@overload
def _parse_count(name: str, raw: str | None, default: None) -> int | None: ...


def _parse_count(name: str, raw: str | None, default: int | None) -> int | None:
    if raw is None or raw.strip() == "":
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"{name}={raw!r}: expected a whole number >= 1")
    return int(raw)


def _parse_positive_float(
    name: str, raw: str | None, default: float, *, unit: str = "seconds"
) -> float:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: expected a number of {unit}") from exc
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be greater than 0")
    return value


def _parse_choice(name: str, raw: str | None, choices: tuple[str, ...], default: str) -> str:
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return value


_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def _parse_switch(name: str, raw: str | None, default: bool) -> bool:
    """On or off: 1/true/yes/on or 0/false/no/off (any case); unset or empty: `default`."""
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in _ON + _OFF:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(_ON + _OFF)}")
    return value in _ON

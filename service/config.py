"""Every environment variable gatequeue reads, in one place.

Services and the CLI build one `Settings` at start-up and pass it down, so no module reads
`os.environ` on its own and tests can build settings explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DB = "gatequeue"
DEFAULT_LEASE_S = 30.0
DEFAULT_API_PORT = 8080


class ConfigError(ValueError):
    """A configuration value a user set cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    mongodb_uri: str | None = None
    db_name: str = DEFAULT_DB
    api_token: str | None = None
    gpus: tuple[str, ...] | None = None  # None: detect at worker start
    lease_s: float = DEFAULT_LEASE_S
    data_dir: Path = field(default_factory=lambda: Path(".gatequeue") / "data")
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    heartbeat_file: Path | None = None
    # None: host name and slots. Set it where host names change on restart (a Deployment's
    # pods) but the worker should find its change-stream resume token again.
    worker_id: str | None = None

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
            data_dir=Path(env.get("GATEQUEUE_DATA_DIR") or Path(".gatequeue") / "data"),
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
        )


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


def _parse_positive_float(name: str, raw: str | None, default: float) -> float:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: expected a number of seconds") from exc
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

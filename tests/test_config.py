"""Configuration: every variable of docs/design.md read in one place, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, parse_gpus
from service.errors import ConfigError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.mongodb_uri is None
    assert s.db_name == "gatequeue"
    assert s.api_token is None
    assert s.gpus is None
    assert s.lease_s == 30.0
    assert s.idempotency_ttl_s == 24 * 3600


def test_all_variables() -> None:
    s = Settings.from_env(
        {
            "MONGODB_URI": "mongodb://x/?replicaSet=rs0",
            "GATEQUEUE_DB": "q",
            "GATEQUEUE_API_TOKEN": "t0k",
            "GATEQUEUE_GPUS": "0,3",
            "GATEQUEUE_LEASE_S": "12.5",
            "GATEQUEUE_DATA_DIR": "/data",
            "GATEQUEUE_LOG_FORMAT": "JSON",
            "GATEQUEUE_WORKER_ID": "gpu-node-7",
            "GATEQUEUE_IDEMPOTENCY_TTL_S": "3600",
        }
    )
    assert s.mongodb_uri == "mongodb://x/?replicaSet=rs0"
    assert s.db_name == "q"
    assert s.api_token == "t0k"
    assert s.gpus == ("0", "3")
    assert s.lease_s == 12.5
    assert s.data_dir == Path("/data")
    assert s.log_format == "json"
    assert s.worker_id == "gpu-node-7"
    assert s.idempotency_ttl_s == 3600


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("2", ("0", "1")), ("cpu", ("cpu",)), ("0", ("cpu",)), ("1, 2", ("1", "2")), ("", None)],
)
def test_gpus(raw: str, expected: tuple[str, ...] | None) -> None:
    assert parse_gpus(raw) == expected


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"GATEQUEUE_GPUS": "a,b"}, "GATEQUEUE_GPUS"),
        ({"GATEQUEUE_LEASE_S": "soon"}, "GATEQUEUE_LEASE_S"),
        ({"GATEQUEUE_LEASE_S": "-1"}, "GATEQUEUE_LEASE_S"),
        ({"GATEQUEUE_LOG_FORMAT": "xml"}, "GATEQUEUE_LOG_FORMAT"),
        ({"GATEQUEUE_IDEMPOTENCY_TTL_S": "0"}, "GATEQUEUE_IDEMPOTENCY_TTL_S"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_only_the_two_configuration_modules_read_the_environment() -> None:
    """service/config.py for the service, trainer/environment.py for the trainer: a module
    that reads os.environ (or os.getenv) itself escapes the documented list of variables."""
    import ast

    repo = Path(__file__).resolve().parents[1]
    allowed = {repo / "service" / "config.py", repo / "trainer" / "environment.py"}
    readers = []
    for package in ("service", "trainer"):
        for path in sorted((repo / package).rglob("*.py")):
            if path in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                    if isinstance(node.value, ast.Name) and node.value.id == "os":
                        readers.append(f"{path.relative_to(repo)}:{node.lineno}")
    assert readers == []

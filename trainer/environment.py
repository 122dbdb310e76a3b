"""Every environment variable the trainer reads, in one place: the trainer's side of
service/config.py (docs/design.md, "Configuration").

The trainer runs without the service (`python -m trainer`, a worker's subprocess, a GPU
machine with no pydantic), so it has its own small reader, standard library only. The names
of the worker's supervision variables are trainer/protocol.py's; their values are read here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trainer import protocol

KERNEL_CACHE = "GATEQUEUE_KERNEL_CACHE"  # where the C++ layer kernel is built
CIRCUIT_CACHE = "GATEQUEUE_CIRCUIT_CACHE"  # where bare network.json files are compiled
MNIST_URL = "GATEQUEUE_MNIST_URL"  # a mirror (file:// too) that replaces MNIST's list

# Read where they are: the process's own settings, not gatequeue's.
NAMES = (KERNEL_CACHE, CIRCUIT_CACHE, MNIST_URL, "XDG_CACHE_HOME", "CC", "CXX", "OMP_WAIT_POLICY")


def _get(name: str) -> str | None:
    return os.environ.get(name) or None


def set_default(name: str, value: str) -> None:
    """For libraries that read the environment when they load (OpenMP): before torch."""
    os.environ.setdefault(name, value)


def snapshot() -> dict[str, str]:
    """The whole environment, as a warm trainer started (trainer/forkserver.py): a run it
    forks must have been meant for the same one."""
    return dict(os.environ)


def become(env: dict[str, str]) -> None:
    """Replace the whole environment: a forked run takes the one its worker made for it, as
    a cold run starts with it."""
    os.environ.clear()
    os.environ.update(env)


def cache_home() -> Path:
    """The user's cache folder: $XDG_CACHE_HOME, else ~/.cache."""
    xdg = _get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


def kernel_cache() -> Path:
    return Path(_get(KERNEL_CACHE) or cache_home() / "gatequeue" / "kernels")


def circuit_cache() -> Path:
    return Path(_get(CIRCUIT_CACHE) or cache_home() / "gatequeue" / "circuits")


def mnist_url() -> str | None:
    return _get(MNIST_URL)


def c_compiler() -> str | None:
    """$CC, when set (else the circuit builder tries cc, gcc, clang)."""
    return _get("CC")


def cxx_compiler() -> str:
    return _get("CXX") or "g++"


def omp_wait_policy() -> str:
    return _get("OMP_WAIT_POLICY") or "unset"


@dataclass(frozen=True)
class Supervisor:
    """What the worker that runs this trainer said of itself (trainer/protocol.py)."""

    first_deadline: float
    job_id: str | None
    attempt: str | None


def supervisor() -> Supervisor | None:
    """The worker's variables, or None when no worker runs this trainer."""
    if os.environ.get(protocol.SUPERVISED_ENV) != protocol.SUPERVISED_BY_STDIN:
        return None
    return Supervisor(
        first_deadline=float(os.environ[protocol.DEADLINE_ENV]),
        job_id=_get(protocol.JOB_ID_ENV),
        attempt=_get(protocol.ATTEMPT_ENV),
    )


def job_identity() -> tuple[str | None, str | None]:
    """(job id, attempt) of the run, for a checkpoint's header; (None, None) by hand."""
    return _get(protocol.JOB_ID_ENV), _get(protocol.ATTEMPT_ENV)

"""Trainer test fixtures: a fresh kernel cache, so the suite really builds the C++ kernel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.runtime import prepare_process

prepare_process()  # before torch loads, where this conftest is the first to import it


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point GATEQUEUE_KERNEL_CACHE at an empty folder for the session (subprocesses too)."""
    path = tmp_path_factory.mktemp("kernel-cache")
    old = os.environ.get("GATEQUEUE_KERNEL_CACHE")
    os.environ["GATEQUEUE_KERNEL_CACHE"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("GATEQUEUE_KERNEL_CACHE", None)
        else:
            os.environ["GATEQUEUE_KERNEL_CACHE"] = old

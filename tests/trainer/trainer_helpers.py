"""Small builders shared by the trainer tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HAS_COMPILER = shutil.which(os.environ.get("CXX", "g++")) is not None

# Where a compiler exists the C++ kernel must build: a failure fails the test, never skips.
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler on PATH")


def run_without_torch(code: str) -> None:
    """Run `code` in a fresh interpreter and check it imported neither torch nor numpy:
    what the API and the worker read of the trainer must not need them."""
    check = (
        "\nimport sys\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code + check],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr

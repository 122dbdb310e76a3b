"""Small builders shared by the trainer tests."""

from __future__ import annotations

import os
import shutil

import pytest

HAS_COMPILER = shutil.which(os.environ.get("CXX", "g++")) is not None

# Where a compiler exists the C++ kernel must build: a failure fails the test, never skips.
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler on PATH")

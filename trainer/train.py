"""The seed's entry point, kept: `python trainer/train.py ...` equals `python -m trainer ...`."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: Python put this folder first on sys.path, where our module names
    # (data, model, logs...) would shadow other packages'; put the repository root instead.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from trainer.runtime import prepare_process

prepare_process()

from trainer.cli import main  # noqa: E402  (after the OpenMP environment is set)

if __name__ == "__main__":
    raise SystemExit(main())

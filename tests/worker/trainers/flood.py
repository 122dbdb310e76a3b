"""Prints GQ_TEST_LINES (default 100,000) numbered stdout lines as fast as it can, and every
1000th line also a numbered stderr line; the last stdout line has no newline."""

import os
import sys

n = int(os.environ.get("GQ_TEST_LINES", "100000"))
out = sys.stdout
for i in range(n):
    if i % 1000 == 0:
        print(f"err {i}", file=sys.stderr)
    out.write(f"line {i}" + ("\n" if i < n - 1 else ""))
out.flush()

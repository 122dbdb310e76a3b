"""A trainer that fails: some stdout, a traceback-like stderr, exit code 1."""

import sys

print("loading data")
for i in range(30):
    print(f"noise {i}", file=sys.stderr)
print("Traceback (most recent call last):", file=sys.stderr)
print('  File "train.py", line 1, in <module>', file=sys.stderr)
print("ValueError: boom: the data set is empty", file=sys.stderr)
sys.exit(1)

"""A stand-in trainer that says which process it is: `pid <n>`, `ppid <n>` (a run forked by
a warm trainer: the fork server's pid; a cold run: the worker's), then one EPOCH line and a
network. Its `--seed` picks what else it does: 3 exits 3 (a crash), 9 prints `pid` and
sleeps until killed, anything else succeeds."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: trainer.*
from trainer import protocol, supervision

supervision.start()
p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
p.add_argument("--output-dir", type=Path, required=True)
args, _ = p.parse_known_args()
print(f"pid {os.getpid()}", flush=True)
print(f"ppid {os.getppid()}", flush=True)
print(f"pgid {os.getpgid(0)}", flush=True)
if args.seed == 3:
    print("crashing on purpose", file=sys.stderr)
    sys.exit(3)
if args.seed == 9:
    while True:
        time.sleep(0.05)
print(protocol.Epoch(1, 1, {"train_loss": 0.5}).format(), flush=True)
args.output_dir.mkdir(parents=True, exist_ok=True)
(args.output_dir / "network.json").write_text(json.dumps({"layers": []}))

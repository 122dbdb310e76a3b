"""A stand-in trainer: prints EPOCH lines, a stderr line, saves a "network" into --output-dir.

With GQ_TEST_LEDGER set it appends `<job id> <attempt> <CUDA_VISIBLE_DEVICES> <pid>` to that
file, so a test can count how often each job really ran and on which device.
"""

import argparse
import json
import os
import sys
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--output-dir", type=Path, required=True)
p.add_argument("--device", default="auto")
args, _ = p.parse_known_args()

ledger = os.environ.get("GQ_TEST_LEDGER")
if ledger:
    with open(ledger, "a") as fh:
        fh.write(
            f"{os.environ['GATEQUEUE_JOB_ID']} {os.environ['GATEQUEUE_ATTEMPT']} "
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '-')} {os.getpid()}\n"
        )
print(f"device={args.device} cuda_visible={os.environ.get('CUDA_VISIBLE_DEVICES')!r}")
print("warming up", file=sys.stderr)
for i in range(1, args.epochs + 1):
    print(f"EPOCH {i}/{args.epochs} train_loss={1 / i:.4f} train_acc=0.{i}5 bogus=x epoch_s=0.01")
args.output_dir.mkdir(parents=True, exist_ok=True)
(args.output_dir / "network.json").write_text(json.dumps({"layers": [], "epochs": args.epochs}))
print("done")

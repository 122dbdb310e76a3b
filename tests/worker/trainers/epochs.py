"""A stand-in trainer: prints EPOCH lines, a stderr line, saves a "network" into --output-dir.

With GQ_TEST_LEDGER set it appends `<job id> <attempt> <CUDA_VISIBLE_DEVICES> <pid>` to that
file, so a test can count how often each job really ran and on which device.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: trainer.*
from trainer import protocol

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--output-dir", type=Path, required=True)
p.add_argument("--device", default="auto")
args, _ = p.parse_known_args()

ledger = os.environ.get("GQ_TEST_LEDGER")
if ledger:
    with open(ledger, "a") as fh:
        fh.write(
            f"{os.environ[protocol.JOB_ID_ENV]} {os.environ[protocol.ATTEMPT_ENV]} "
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '-')} {os.getpid()}\n"
        )
print(f"device={args.device} cuda_visible={os.environ.get('CUDA_VISIBLE_DEVICES')!r}")
print("warming up", file=sys.stderr)
for i in range(1, args.epochs + 1):
    metrics = {"train_loss": 1 / i, "train_acc": float(f"0.{i}5"), "epoch_s": 0.01}
    # A pair that is no number rides along: the worker must skip it, not drop the line.
    print(protocol.Epoch(i, args.epochs, metrics).format() + " bogus=x")
args.output_dir.mkdir(parents=True, exist_ok=True)
(args.output_dir / "network.json").write_text(json.dumps({"layers": [], "epochs": args.epochs}))
print("done")

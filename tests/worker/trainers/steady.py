"""A stand-in trainer under the worker's supervision (trainer.supervision): `--epochs` EPOCH
lines `GQ_EPOCH_S` apart (default 0.2 s; GQ_EPOCHS overrides the count), then a
network.json in --output-dir.

With GQ_TEST_LEDGER set it appends `<job id> <attempt id> <monotonic time> <fence deadline>`
to that
file at its start and every 50 ms while it runs, so a test can tell when each attempt
really ran (the last line of an attempt is within 50 ms of its end, however it ended).
"""

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: trainer.*

from trainer import supervision

supervised = supervision.start()
p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--output-dir", type=Path, required=True)
args, _ = p.parse_known_args()
epoch_s = float(os.environ.get("GQ_EPOCH_S", "0.2"))
if os.environ.get("GQ_EPOCHS"):  # a test's override of the job's epochs
    args.epochs = int(os.environ["GQ_EPOCHS"])
ledger = os.environ.get("GQ_TEST_LEDGER")


def heartbeat() -> None:
    job = os.environ.get("GATEQUEUE_JOB_ID", "-")
    attempt = os.environ.get("GATEQUEUE_ATTEMPT_ID", "-")
    with open(ledger, "a", buffering=1) as fh:  # type: ignore[arg-type]
        while True:
            deadline = supervised.deadline if supervised else float("inf")
            fh.write(f"{job} {attempt} {time.monotonic()!r} {deadline!r}\n")
            time.sleep(0.05)


if ledger:
    threading.Thread(target=heartbeat, daemon=True).start()
print(f"pid {os.getpid()}", flush=True)
for i in range(1, args.epochs + 1):
    time.sleep(epoch_s)
    print(f"EPOCH {i}/{args.epochs} train_loss={1 / i:.4f} test_acc_discrete=0.{i}", flush=True)
args.output_dir.mkdir(parents=True, exist_ok=True)
(args.output_dir / "network.json").write_text(json.dumps({"epochs": args.epochs}))
print("done", flush=True)

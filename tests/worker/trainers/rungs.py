"""A stand-in trainer for sweep schedulers: its validation metric is a known function of its
options, so a test can say which runs ASHA must promote and the median rule must stop.

`val_acc_discrete` at epoch e of E is `quality * (0.5 + 0.5 * e / E)` with `quality =
(gates * 37 % 100) / 100`: the ranking of runs is the same at every epoch. It speaks the
checkpoint protocol of `python -m trainer` (a JSON checkpoint at every epoch's end,
`--resume-from`, `--stop-epoch K`: checkpoint after epoch K and exit 76; the stdin request
`checkpoint-and-stop`). With GQ_TEST_LEDGER set it appends `<job id> <epoch>` for every
epoch it trains, so a test sees that no epoch is trained twice.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: trainer.*

from trainer import protocol, supervision

supervised = supervision.start()
p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--gates", type=int, default=40)
p.add_argument("--output-dir", type=Path, required=True)
p.add_argument("--checkpoint-dir", type=Path)
p.add_argument("--resume-from", type=Path)
p.add_argument("--stop-epoch", type=int)
args, _ = p.parse_known_args()
epoch_s = float(os.environ.get("GQ_EPOCH_S", "0.0"))
ledger = os.environ.get("GQ_TEST_LEDGER")
job = os.environ.get(protocol.JOB_ID_ENV, "-")
quality = (args.gates * 37 % 100) / 100


def checkpoint(epoch: int) -> None:
    assert args.checkpoint_dir is not None
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = args.checkpoint_dir / f"rungs-{epoch:05d}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": "rungs", "epoch": epoch}))
    os.replace(tmp, path)
    print(protocol.Checkpoint(epoch, 0, path, path.stat().st_size).format(), flush=True)


done = 0
if args.resume_from is not None:
    state = json.loads(args.resume_from.read_text())
    done = int(state["epoch"])
    print(protocol.Resumed(done, 0).format(), flush=True)
if args.stop_epoch is not None and args.stop_epoch <= done < args.epochs:
    checkpoint(done)
    sys.exit(protocol.EXIT_CHECKPOINTED)
for i in range(done + 1, args.epochs + 1):
    time.sleep(epoch_s)
    if ledger:
        with open(ledger, "a") as fh:
            fh.write(f"{job} {i}\n")
    value = quality * (0.5 + 0.5 * i / args.epochs)
    metrics = {"val_acc_discrete": value, "test_acc_discrete": value - 0.01, "epoch_s": 0.01}
    print(protocol.Epoch(i, args.epochs, metrics).format(), flush=True)
    checkpoint(i)
    stop = supervised is not None and protocol.CheckpointAndStop.WORD in supervised.take_requests()
    if stop or (args.stop_epoch is not None and args.stop_epoch <= i < args.epochs):
        sys.exit(protocol.EXIT_CHECKPOINTED)
args.output_dir.mkdir(parents=True, exist_ok=True)
(args.output_dir / "network.json").write_text(json.dumps({"epochs": args.epochs}))
print("done", flush=True)

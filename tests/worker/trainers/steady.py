"""A stand-in trainer under the worker's supervision (trainer.supervision): `--epochs` EPOCH
lines `GQ_EPOCH_S` apart (default 0.2 s; GQ_EPOCHS overrides the count), then a
network.json in --output-dir.

It speaks the checkpoint protocol of `python -m trainer` (trainer/checkpoint.py): with
`--checkpoint-dir` it writes a checkpoint at the end of an epoch (a small JSON file, written
atomically) at most once per `--checkpoint-interval-s` and prints `CHECKPOINT epoch=K step=0
path=P bytes=N`; `--resume-from FILE` continues after the checkpoint's epoch (`RESUMED
epoch=K step=0`), or exits 65 with a message on stderr if the file is not one of its
checkpoints; the stdin request `checkpoint-and-stop` makes it checkpoint and exit 76.

With GQ_TEST_LEDGER set it appends `<job id> <attempt id> <monotonic time> <fence deadline>`
to that file at its start and every 50 ms while it runs, so a test can tell when each
attempt really ran (the last line of an attempt is within 50 ms of its end, however it
ended).
"""

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: trainer.*

from trainer import protocol, supervision

supervised = supervision.start()
p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--output-dir", type=Path, required=True)
p.add_argument("--checkpoint-dir", type=Path)
p.add_argument("--resume-from", type=Path)
p.add_argument("--checkpoint-interval-s", type=float, default=300.0)
args, _ = p.parse_known_args()
epoch_s = float(os.environ.get("GQ_EPOCH_S", "0.2"))
if os.environ.get("GQ_EPOCHS"):  # a test's override of the job's epochs
    args.epochs = int(os.environ["GQ_EPOCHS"])
ledger = os.environ.get("GQ_TEST_LEDGER")


def heartbeat() -> None:
    job = os.environ.get(protocol.JOB_ID_ENV, "-")
    attempt = os.environ.get(protocol.ATTEMPT_ID_ENV, "-")
    with open(ledger, "a", buffering=1) as fh:  # type: ignore[arg-type]
        while True:
            deadline = supervised.deadline if supervised else float("inf")
            fh.write(f"{job} {attempt} {time.monotonic()!r} {deadline!r}\n")
            time.sleep(0.05)


last_checkpoint = time.monotonic()


def checkpoint(epoch: int, *, now: bool = False) -> None:
    """At an epoch's end, at most once per --checkpoint-interval-s (0: every epoch), as the
    real trainer does; `now` for a requested one."""
    global last_checkpoint
    if args.checkpoint_dir is None:
        return
    if not now and time.monotonic() - last_checkpoint < args.checkpoint_interval_s:
        return
    last_checkpoint = time.monotonic()
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = args.checkpoint_dir / f"steady-{epoch:05d}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": "steady", "epoch": epoch, "epochs": args.epochs}))
    os.replace(tmp, path)
    print(protocol.Checkpoint(epoch, 0, path, path.stat().st_size).format(), flush=True)


if ledger:
    threading.Thread(target=heartbeat, daemon=True).start()
print(f"pid {os.getpid()}", flush=True)
done = 0
if args.resume_from is not None:
    try:
        state = json.loads(args.resume_from.read_text())
        assert state["format"] == "steady"
        done = int(state["epoch"])
    except Exception as exc:  # a corrupt checkpoint: refuse it as the real trainer does
        print(f"error: cannot resume from {args.resume_from}: {exc!r}", file=sys.stderr)
        sys.exit(protocol.EXIT_BAD_CHECKPOINT)
    print(protocol.Resumed(done, 0).format(), flush=True)
for i in range(done + 1, args.epochs + 1):
    time.sleep(epoch_s)
    metrics = {"train_loss": 1 / i, "test_acc_discrete": i / 10}
    print(protocol.Epoch(i, args.epochs, metrics).format(), flush=True)
    if supervised is not None and protocol.CheckpointAndStop.WORD in supervised.take_requests():
        checkpoint(i, now=True)
        sys.exit(protocol.EXIT_CHECKPOINTED)
    checkpoint(i)
args.output_dir.mkdir(parents=True, exist_ok=True)
(args.output_dir / "network.json").write_text(json.dumps({"epochs": args.epochs}))
print("done", flush=True)

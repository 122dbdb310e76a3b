"""What a checkpoint saves when a run is killed, and what checkpoints cost.

    python bench/resume.py [--epochs 20] [--gates 16000] [--layers 4] [--big-gates 32000]

One job (digits on CPU, the trainer as a worker starts it) is killed with SIGKILL when
25 %, 50 % and 75 % of its epochs are done, halfway through the next epoch, as a machine
dies. It is then finished two ways, both timed on this machine in this script:

- restart from zero: the whole run again (what round 1 did): every epoch trained so far
  is trained again;
- resume: `--resume-from` the newest checkpoint the killed run left (checkpoints every
  epoch, `--checkpoint-interval-s 0`): only the epoch in progress is trained again.

Printed per kill point: epochs trained again and wall time from the kill to the finished
network, for both, and their ratios; and that the resumed run ends with the very
test_acc_discrete of the uninterrupted one.

Then the overhead: the seconds each checkpoint write took (the trainer's own "checkpoint
written" record) over the default interval (300 s: at most one write per 300 s of
training), as a percentage of training time; measured on this network and on a
32,000 x 4 one (one epoch), whose checkpoint size is printed too. The worker's upload of
a checkpoint runs beside training, in the worker process, and is not in these figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.options import RUN_CONTROL_OPTIONS  # noqa: E402

DEFAULT_INTERVAL_S = next(o.default for o in RUN_CONTROL_OPTIONS if o.name == "checkpointIntervalS")

KILL_POINTS = (0.25, 0.50, 0.75)


@dataclass
class Run:
    """One trainer process as the bench saw it."""

    wall_s: float = 0.0
    epochs_printed: list[int] = field(default_factory=list)
    checkpoints: list[tuple[int, int, Path]] = field(default_factory=list)  # epoch, step, path
    write_s: list[float] = field(default_factory=list)
    checkpoint_bytes: list[int] = field(default_factory=list)
    summary: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None


def trainer_cmd(args: argparse.Namespace, out: Path, *extra: str, gates: int | None = None,
                layers: int | None = None, epochs: int | None = None) -> list[str]:  # fmt: skip
    return [
        sys.executable, "-m", "trainer", "--dataset", "digits", "--device", "cpu",
        "--gate-optimizer", "softmax", "--gates", str(gates or args.gates),
        "--network-layers", str(layers or args.layers), "--residual-layers", "0",
        "--epochs", str(epochs or args.epochs), "--batch-size", "32", "--seed", "7",
        "--no-circuit", "--output-dir", str(out), *extra,
    ]  # fmt: skip


def _read(line: str, run: Run) -> None:
    if line.startswith("EPOCH "):
        run.epochs_printed.append(int(line.split()[1].split("/")[0]))
    elif line.startswith("CHECKPOINT "):
        pairs = dict(p.split("=", 1) for p in line.split(" bytes=")[0].split()[1:4])
        run.checkpoints.append((int(pairs["epoch"]), int(pairs["step"]), Path(pairs["path"])))
    elif line.startswith("SUMMARY "):
        run.summary = dict(p.split("=", 1) for p in line.split()[1:])
    elif "] checkpoint written " in line:  # the trainer's log record (trainer/logs.py)
        pairs = dict(p.split("=", 1) for p in line.split("] checkpoint written ")[1].split())
        run.write_s.append(float(pairs["seconds"]))
        run.checkpoint_bytes.append(int(pairs["bytes"]))


def train(cmd: list[str], *, kill_in_epoch: int | None = None) -> Run:
    """Run the trainer to its end, or SIGKILL it halfway through epoch `kill_in_epoch`
    (half the previous epoch's time after its EPOCH line)."""
    run = Run()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    timer = None
    assert proc.stdout is not None
    for line in proc.stdout:
        _read(line.rstrip("\n"), run)
        if (
            timer is None
            and kill_in_epoch is not None
            and line.startswith(f"EPOCH {kill_in_epoch - 1}/")
        ):
            epoch_s = float(line.split("epoch_s=")[1].split()[0])
            timer = threading.Timer(epoch_s / 2, proc.send_signal, (signal.SIGKILL,))
            timer.start()
    run.returncode = proc.wait()
    run.wall_s = time.perf_counter() - start
    if timer is not None:
        timer.cancel()
    if kill_in_epoch is None and run.returncode != 0:
        raise SystemExit(f"the trainer failed ({run.returncode}): {' '.join(cmd)}")
    return run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--gates", type=int, default=16000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--big-gates", type=int, default=32000, help="0: skip the big network")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()} cores={os.cpu_count()} "
        f"python={platform.python_version()}; digits, {args.layers} x {args.gates} gates, "
        f"{args.epochs} epochs, CPU",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        work = Path(tmp)
        every_epoch = ["--checkpoint-interval-s", "0"]
        reference = train(trainer_cmd(args, work / "reference"))
        full_s = reference.wall_s
        headline = reference.summary["test_acc_discrete"]
        print(f"uninterrupted: {full_s:.1f} s, test_acc_discrete={headline}", flush=True)
        with_ckpt = train(
            trainer_cmd(args, work / "ckpt", "--checkpoint-dir", str(work / "ckpt-dir"),
                        *every_epoch)
        )  # fmt: skip
        print(
            f"checkpointing every epoch: {with_ckpt.wall_s:.1f} s "
            f"({len(with_ckpt.write_s)} writes, {sum(with_ckpt.write_s):.2f} s of writing, "
            f"{100 * sum(with_ckpt.write_s) / with_ckpt.wall_s:.2f} % of the run)",
            flush=True,
        )

        print(
            "\nkilled at | epochs trained again: restart / resume | wall s to finish after "
            "the kill: restart / resume (ratio) | resumed result",
            flush=True,
        )
        for point in KILL_POINTS:
            name = f"kill-{int(point * 100)}"
            ck_dir = work / f"{name}-ck"
            killed = train(
                trainer_cmd(args, work / name, "--checkpoint-dir", str(ck_dir), *every_epoch),
                kill_in_epoch=round(point * args.epochs) + 1,
            )
            if killed.returncode == 0 or not killed.checkpoints:
                print(f"{int(point * 100)} %: the run was not killed with a checkpoint; "
                      "use more epochs", flush=True)  # fmt: skip
                continue
            epoch, _step, latest = killed.checkpoints[-1]
            done_epochs = max(killed.epochs_printed, default=0)
            restart = train(trainer_cmd(args, work / f"{name}-restart"))
            resumed = train(
                trainer_cmd(args, work / f"{name}-resume", "--checkpoint-dir", str(ck_dir),
                            *every_epoch, "--resume-from", str(latest))
            )  # fmt: skip
            # Epochs whose work is done again: all of them from zero; from the checkpoint
            # only the epochs after it that the killed run had finished, plus the partial
            # epoch it was in (counted as one).
            again_restart = done_epochs + 1
            again_resume = done_epochs - epoch + 1
            same = resumed.summary.get("test_acc_discrete") == headline
            print(
                f"{int(point * 100):>3} % (epoch {done_epochs + 1} of {args.epochs}, "
                f"checkpoint of epoch {epoch}) | {again_restart} / {again_resume} "
                f"(x{again_restart / again_resume:.1f}) | {restart.wall_s:.1f} / "
                f"{resumed.wall_s:.1f} (x{restart.wall_s / resumed.wall_s:.2f}) | "
                f"test_acc_discrete {resumed.summary.get('test_acc_discrete')} "
                f"{'same as uninterrupted' if same else 'DIFFERS from ' + headline}",
                flush=True,
            )

        interval = float(DEFAULT_INTERVAL_S)
        mean_write = sum(with_ckpt.write_s) / len(with_ckpt.write_s)
        print(
            f"\noverhead at the default interval ({interval:.0f} s): one write of "
            f"{mean_write * 1000:.0f} ms ({with_ckpt.checkpoint_bytes[-1]:,} bytes) per "
            f"{interval:.0f} s of training = {100 * mean_write / interval:.3f} %",
            flush=True,
        )
        if args.big_gates:
            big = train(
                trainer_cmd(args, work / "big", "--checkpoint-dir", str(work / "big-ck"),
                            *every_epoch, gates=args.big_gates, layers=4, epochs=1)
            )  # fmt: skip
            print(
                f"{args.big_gates:,} x 4 network: checkpoint {big.checkpoint_bytes[-1]:,} "
                f"bytes, written in {big.write_s[-1] * 1000:.0f} ms = "
                f"{100 * big.write_s[-1] / interval:.3f} % of {interval:.0f} s of training "
                f"(its one digits epoch took {big.wall_s:.1f} s in all)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

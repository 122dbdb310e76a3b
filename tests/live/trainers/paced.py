"""A stand-in trainer for the browser test: a few log lines per epoch with short pauses
and one EPOCH line per epoch, so a page can be watched filling up. Flags it does not know
are ignored; GQ_EPOCH_S sets the seconds per epoch (default 0.4). `--seed 666` makes the
run fail after its first epoch, so a test can watch a failure. More gates reach a higher
accuracy and a higher learning rate gets there sooner, so the runs of a sweep differ. A
finished run prints a CIRCUIT line (docs/circuits.md) whose live gates and speed follow from
its gates and learning rate, so a sweep's circuit columns differ too."""

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: the line's writer
from trainer import protocol
from trainer.circuit.ops import GATE_NAMES

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--gate-optimizer", default="?")
p.add_argument("--gates", type=int, default=0)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--learning-rate", type=float, default=0.01)
p.add_argument("--network-layers", type=int, default=2)
p.add_argument("--output-dir", type=Path, required=True)
args, _ = p.parse_known_args()
epoch_s = float(os.environ.get("GQ_EPOCH_S", "0.4"))
steps = 8
speed = 0.6 * min(3.0, (args.learning_rate / 0.01) ** 0.5)
ceiling = 1 - 8 / args.gates if args.gates > 8 else 1.0

print(f"loading digits; {args.gates} gates/layer; optimizer {args.gate_optimizer}", flush=True)
print("no CUDA device: training on the CPU", file=sys.stderr, flush=True)
for epoch in range(1, args.epochs + 1):
    for step in range(1, steps + 1):
        time.sleep(epoch_s / steps)
        loss = 2.3 * math.exp(-0.6 * speed * (epoch - 1 + step / steps))
        print(f"epoch {epoch} step {step}/{steps} loss={loss:.4f}", flush=True)
    acc = ceiling * (1 - 0.9 * math.exp(-speed * epoch))
    metrics = {"train_loss": loss, "train_acc": acc, "test_acc": acc - 0.03,
               "test_acc_discrete": acc - 0.05, "epoch_s": epoch_s}  # fmt: skip
    print(protocol.Epoch(epoch, args.epochs, metrics).format(), flush=True)
    if args.seed == 666:
        print("diverged: loss is nan", file=sys.stderr, flush=True)
        sys.exit(protocol.EXIT_FAILURE)
args.output_dir.mkdir(parents=True, exist_ok=True)
(args.output_dir / "network.txt").write_text("a stand-in network\n")
gates = max(1, args.gates) * args.network_layers
live = max(1, gates // 2 - round(100 * args.learning_rate))
histogram = dict.fromkeys(GATE_NAMES, 0) | {"FALSE": gates - live, "A AND B": live}
circuit = {"gates": gates, "gatesLive": live, "depth": args.network_layers,
           "imagesPerS": round(1e9 / live, 1), "verified": True, "disagreements": 0,
           "gateHistogram": histogram}  # fmt: skip
print(protocol.Circuit(circuit).format(), flush=True)
print("done", flush=True)

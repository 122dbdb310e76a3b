"""A stand-in trainer for the browser test: a few log lines per epoch with short pauses
and one EPOCH line per epoch, so a page can be watched filling up. Flags it does not know
are ignored; GQ_EPOCH_S sets the seconds per epoch (default 0.4). `--seed 666` makes the
run fail after its first epoch, so a test can watch a failure. More gates reach a higher
accuracy and a higher learning rate gets there sooner, so the runs of a sweep differ. The
validation accuracies are the test ones shifted by `val_shift(seed)`, so the runs of one
combination over seeds differ by known amounts. A finished run prints a CIRCUIT line
(docs/circuits.md) whose live gates and speed follow from its gates and learning rate, so a
sweep's circuit columns differ too, and a SUMMARY whose result is its last epoch's. `--seed
13` collapses: a discrete accuracy far below the relaxed one, 1 live gate, depth 1."""

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
COLLAPSING_SEED = 13


def val_shift(seed: int) -> float:
    """What the validation accuracies add to the test ones: a known function of the seed."""
    return 0.01 * (seed % 5) - 0.02


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
    discrete = 0.15 if args.seed == COLLAPSING_SEED else acc - 0.05
    metrics = {"train_loss": loss, "train_acc": acc,
               "val_acc": acc - 0.03 + val_shift(args.seed),
               "val_acc_discrete": discrete + val_shift(args.seed),
               "test_acc": acc - 0.03, "test_acc_discrete": discrete,
               "epoch_s": epoch_s}  # fmt: skip
    print(protocol.Epoch(epoch, args.epochs, metrics).format(), flush=True)
    if args.seed == 666:
        print("diverged: loss is nan", file=sys.stderr, flush=True)
        sys.exit(protocol.EXIT_FAILURE)
args.output_dir.mkdir(parents=True, exist_ok=True)
(args.output_dir / "network.txt").write_text("a stand-in network\n")
gates = max(1, args.gates) * args.network_layers
live = max(1, gates // 2 - round(100 * args.learning_rate))
depth = args.network_layers
if args.seed == COLLAPSING_SEED:
    live, depth = 1, 1
histogram = dict.fromkeys(GATE_NAMES, 0) | {"FALSE": gates - live, "A AND B": live}
circuit = {"gates": gates, "gatesLive": live, "depth": depth,
           "imagesPerS": round(1e9 / live, 1), "verified": True, "disagreements": 0,
           "gateHistogram": histogram}  # fmt: skip
print(protocol.Circuit(circuit).format(), flush=True)
print("done", flush=True)
result = protocol.Result(
    epoch=args.epochs,
    test_acc_discrete=metrics["test_acc_discrete"],
    test_acc=metrics["test_acc"],
    discretization_gap=metrics["test_acc"] - metrics["test_acc_discrete"],
    val_acc_discrete=metrics["val_acc_discrete"],
)
network = args.output_dir / "network.txt"
print(protocol.Summary(args.epochs, {}, gates, network, result).format(), flush=True)

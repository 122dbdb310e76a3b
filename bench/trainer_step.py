"""Time one Adam training step of our logic layer against difflogic's CPU formulation.

Baseline: the weighted sum of the 16 relaxed ops, batch-major, as difflogic's Python
implementation computes it (trainer.reference). Ours: the same network (same connections,
same logits, softmax gates) through `build_model`, for each available backend. Prints the
machine, both timings and the ratio.

    python bench/trainer_step.py                      # 784 inputs, 32000 gates x 4, batch 128
    python bench/trainer_step.py --gates 4000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import build_model
from trainer.layer import resolve_backend
from trainer.reference import ReferenceNet


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_steps(step: Callable[[], float], warmup: int, repeats: int) -> tuple[float, float]:
    """(median seconds per step, loss of the first step)."""
    first_loss = step()
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first_loss


def make_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float
) -> Callable[[], float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-dim", type=int, default=784)
    parser.add_argument("--gates", type=int, default=32000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--grouping", type=int, default=10)
    parser.add_argument("--tau", type=float, default=100.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--reference-repeats", type=int, default=5)
    parser.add_argument("--backends", default="cpp,torch", help="ours to time, comma-separated")
    args = parser.parse_args()

    torch.manual_seed(0)
    print(f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads; python {platform.python_version()}")
    print(f"config: {args.in_dim} inputs, {args.gates} gates x {args.layers} layers, "
          f"batch {args.batch}, softmax gates, one Adam step (forward, loss, backward, update)")
    x = (torch.rand(args.batch, args.in_dim) > 0.5).float()
    y = torch.randint(0, args.grouping, (args.batch,))
    common = dict(gates=args.gates, network_layers=args.layers, grouping=args.grouping,
                  group_sum_tau=args.tau, gate_optimizer="softmax")

    # The reference gets the very network ours start from: same seed, same connections.
    torch.manual_seed(1)
    template = build_model(args.in_dim, backend="torch", **common)
    ref = ReferenceNet(
        [(layer.idx_a, layer.idx_b) for layer in template.layers],
        [layer.logits for layer in template.layers],
        args.grouping,
        args.tau,
    )
    del template

    ours: dict[str, tuple[float, float]] = {}
    for backend in [b for b in args.backends.split(",") if b]:
        try:
            resolve_backend(backend, torch.device("cpu"))
        except ValueError as exc:
            print(f"ours [{backend}]: skipped: {exc}")
            continue
        torch.manual_seed(1)
        model = build_model(args.in_dim, backend=backend, **common)
        seconds, loss = time_steps(make_step(model, x, y, 0.01), args.warmup, args.repeats)
        ours[backend] = (seconds, loss)
        print(f"ours [{backend}]: {seconds * 1e3:.1f} ms/step (first loss {loss:.6f})")
        del model
    ref_s, ref_loss = time_steps(make_step(ref, x, y, 0.01), 1, args.reference_repeats)
    print(f"reference [16-op weighted sum, batch-major]: {ref_s * 1e3:.1f} ms/step "
          f"(first loss {ref_loss:.6f})")
    for backend, (seconds, loss) in ours.items():
        same = "same" if abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss)) else "DIFFERENT"
        print(f"ratio reference/ours [{backend}]: {ref_s / seconds:.1f}x ({same} first loss)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

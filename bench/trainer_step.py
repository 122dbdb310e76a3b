"""Time one Adam training step of our logic layer against difflogic's CPU formulation.

Baseline: the weighted sum of the 16 relaxed ops, batch-major, as difflogic's Python
implementation computes it (trainer.reference). Ours: the same network (same connections,
same initial logits, softmax gates) built by `build_model`, once per backend. The models
take turns step by step, so a load spike from elsewhere hits all of them alike; the ratio
is of medians. Prints the machine, the timings and the ratios.

    python bench/trainer_step.py                      # 784 inputs, 32000 gates x 4, batch 128
    python bench/trainer_step.py --gates 4000 --rounds 5
    python bench/trainer_step.py --device cuda --backends difflogic,torch
    python bench/trainer_step.py --conv 16,32 --image 28,28,1 --gates 4000 --layers 2

With `--conv`, the network is convolutional (trainer.conv: tree convolutions over gathered
patches through the same layer backends, OR pooling, then `--layers` dense layers) and the
baseline is trainer.reference.ReferenceConvNet: F.unfold patches, the 16-op sum per tree
level, F.max_pool2d.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.runtime import prepare_process

prepare_process()  # for every model alike: see trainer/runtime.py

import torch  # noqa: E402

from trainer import build_model  # noqa: E402
from trainer.convspec import ConvSpec, parse_channels  # noqa: E402
from trainer.cpuinfo import cpu_model  # noqa: E402
from trainer.data.catalog import ImageShape  # noqa: E402
from trainer.layer import resolve_backend  # noqa: E402
from trainer.reference import ReferenceConvNet, ReferenceNet  # noqa: E402

REFERENCE = "reference"


def make_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> Callable[[], float]:
    """One timed Adam step; returns seconds (synchronised on CUDA)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def first_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-dim", type=int, default=784)
    parser.add_argument("--gates", type=int, default=32000)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--grouping", type=int, default=10)
    parser.add_argument("--tau", type=float, default=100.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", default="cpp,torch", help="ours to time, comma-separated")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--conv", default=None, help="conv channels per block, e.g. 16,32")
    parser.add_argument("--image", default="28,28,1", help="H,W,C of the conv input")
    parser.add_argument("--tree-depth", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.conv:
        args.in_dim = math.prod(int(v) for v in args.image.split(","))
    device = torch.device(args.device)

    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__}; "
        f"{torch.get_num_threads()} threads; python {platform.python_version()}; "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}", flush=True)
    print(
        f"config: {args.in_dim} inputs, {args.gates} gates x {args.layers} layers, "
        f"batch {args.batch}, softmax gates, one Adam step (forward, loss, backward, "
        f"update) on {device}",
        flush=True,
    )
    torch.manual_seed(0)
    x = (torch.rand(args.batch, args.in_dim) > 0.5).float().to(device)
    y = torch.randint(0, args.grouping, (args.batch,)).to(device)
    common = dict(
        gates=args.gates,
        network_layers=args.layers,
        grouping=args.grouping,
        group_sum_tau=args.tau,
        gate_optimizer="softmax",
    )
    if args.conv:
        h, w, c = (int(v) for v in args.image.split(","))
        args.in_dim = h * w * c
        x = (torch.rand(args.batch, args.in_dim) > 0.5).float().to(device)
        common.update(
            architecture="conv",
            image=ImageShape(h, w, c),
            conv=ConvSpec(parse_channels(args.conv), depth=args.tree_depth),
        )
        print(f"conv: blocks {args.conv} over {h}x{w}x{c}, 3x3 trees of depth "
              f"{args.tree_depth}, 2x2 OR pooling", flush=True)  # fmt: skip

    models: dict[str, torch.nn.Module] = {}
    for backend in [b for b in args.backends.split(",") if b]:
        try:
            resolve_backend(backend, device)
        except ValueError as exc:
            print(f"ours [{backend}]: skipped: {exc}", flush=True)
            continue
        torch.manual_seed(1)  # every model starts from the same network
        models[backend] = build_model(args.in_dim, backend=backend, **common).to(device)
    if not args.no_reference:
        torch.manual_seed(1)
        template = build_model(args.in_dim, backend="torch", **common).to(device)
        if args.conv:
            models[REFERENCE] = ReferenceConvNet(template)
        else:
            models[REFERENCE] = ReferenceNet(
                [(layer.idx_a, layer.idx_b) for layer in template.layers],
                [layer.logits for layer in template.layers],
                args.grouping,
                args.tau,
            )
        del template

    losses = {name: first_loss(model, x, y) for name, model in models.items()}
    steps = {name: make_step(model, x, y, device) for name, model in models.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step())

    median = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        label = (
            REFERENCE + " [16-op weighted sum, batch-major]"
            if name == REFERENCE
            else f"ours [{name}]"
        )
        print(
            f"{label}: median {median[name] * 1e3:.1f} ms/step, min {min(ts) * 1e3:.1f} "
            f"(first loss {losses[name]:.6f})",
            flush=True,
        )
    if REFERENCE in median:
        ref_loss = losses[REFERENCE]
        for name in median:
            if name == REFERENCE:
                continue
            same = abs(losses[name] - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss))
            print(
                f"ratio reference/ours [{name}]: {median[REFERENCE] / median[name]:.1f}x "
                f"(of minima {min(times[REFERENCE]) / min(times[name]):.1f}x; "
                f"{'same' if same else 'DIFFERENT'} loss)",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the straight-through default costs per training step, against the soft estimator.

    python bench/estimator_cost.py              # the seed's network, batch 128, 1 thread
    python bench/estimator_cost.py --rounds 40 --backend torch

The seed's network (3,332 gates x 4 layers, the digits inputs) trains batches of 128 random
0/1 inputs with Adam, once under `gateEstimator` soft (the estimator before this version)
and once under straight_through (the default), in alternating rounds of 10 steps so that
both see the same machine load; prints each one's median seconds per step, the ratio, and
the seconds per digits epoch that makes (12 steps: 1,437 training samples / 128). The other
new defaults cost nothing per step: the residual init runs once, and the learning rate is a
number. Timings on a shared machine are noisy: the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from service.jobs.request import SEED_BODY  # noqa: E402
from trainer.cpuinfo import cpu_model  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.model import build_model  # noqa: E402

BATCH = 128


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--backend", default="auto", choices=("auto", "cpp", "torch"))
    args = p.parse_args()
    torch.set_num_threads(1)
    digits = load_dataset("digits")
    inputs, train = digits.in_dim, len(digits.y_train)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(BATCH, inputs, generator=gen) > 0.5).float()
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    setups = {}
    for estimator in ("soft", "straight_through"):
        torch.manual_seed(0)
        model = build_model(
            inputs, gates=SEED_BODY["gates"], network_layers=SEED_BODY["networkLayers"],
            grouping=10, group_sum_tau=SEED_BODY["groupSumTau"],
            gate_optimizer=SEED_BODY["gateOptimizer"], residual_layers=SEED_BODY["residualLayers"],
            noise_temp=SEED_BODY["noiseTemp"], gate_estimator=estimator, backend=args.backend,
        ).train()  # fmt: skip
        setups[estimator] = (model, torch.optim.Adam(model.parameters(), lr=0.01))
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, (model, opt) in setups.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(
        f"machine: cpu={cpu_model()!r} cores={os.cpu_count()} python={platform.python_version()}"
        f" torch={torch.__version__} threads=1 backend={setups['soft'][0].backend_on('cpu')}"
        f"  load={os.getloadavg()[0]:.1f}"
    )
    steps_per_epoch = math.ceil(train / BATCH)
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in median.items():
        print(f"{name:17s} {1000 * seconds:7.2f} ms/step  {steps_per_epoch * seconds:.3f} s/epoch")
    print(f"ratio straight_through / soft: {median['straight_through'] / median['soft']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

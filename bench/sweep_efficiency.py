"""What a sweep's scheduler and search save: a full grid against ASHA, random+ASHA and
TPE+ASHA on digits, two CPU slots.

    python bench/sweep_efficiency.py [--epochs 8] [--trials 16] [--gates 250,500,1000]

Two in-process workers of one CPU slot each run the real trainer (`python -m trainer
--no-circuit`, one thread) for every sweep in turn, on a MongoDB (`MONGODB_URI`, else the
embedded server). The space is gateOptimizer x gates x groupSumTau x learningRate (2 x 3 x 2
x 4 = 48 combinations by default). Per sweep: total trainer CPU-seconds (the children's
rusage, warm trainers included: workers are made per sweep and stopped before it is read;
`--cold` for cold starts), wall time, epochs trained, and the best run's test accuracy, the
best run chosen by `val_acc_discrete` (the validation split) as the sweep's `best` picks it.
The goal (issue 22): the best within 0.5 pp of the grid's with at most a quarter of its
compute. The grid is the baseline; each ratio is printed against it, with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api_submit import machine, mongodb  # noqa: E402

from service.mongo.connect import connect  # noqa: E402
from service.store import Store  # noqa: E402
from service.sweeps.lifecycle import create_sweep  # noqa: E402
from service.sweeps.record import metric_value  # noqa: E402
from service.sweeps.spec import SweepRequest, plan  # noqa: E402
from service.worker import Worker  # noqa: E402


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run_sweep(store: Store, body: dict[str, Any]) -> dict[str, Any]:
    made = await create_sweep(
        store, plan(SweepRequest.model_validate(body), max_jobs=10_000), submitted_by=None
    )
    sweep_id = made.sweep.id
    while True:  # the bench's own loop: a second's poll costs nothing against minutes of runs
        sweep = await store.sweeps.get(sweep_id)
        rows = await store.jobs.sweep_rows(sweep_id)
        assert sweep is not None
        finished = [r for r in rows if r["status"] in ("Succeeded", "Failed", "Cancelled")]
        if len(finished) == sweep.total:
            break
        await asyncio.sleep(1.0)
    failed = [r for r in rows if r["status"] != "Succeeded"]
    assert not failed, failed[0].get("error")
    best = max(rows, key=lambda r: metric_value(r, "val_acc_discrete") or -1.0)
    return {
        "runs": len(rows),
        "epochs": sum((r.get("latestMetrics") or {}).get("epoch", 0) for r in rows),
        "stopped": sum(1 for r in rows if r.get("stoppedEarly")),
        "val": metric_value(best, "val_acc_discrete"),
        "test": metric_value(best, "test_acc_discrete"),
    }


async def with_workers(
    store: Store, body: dict[str, Any] | None, args: argparse.Namespace
) -> dict[str, Any]:
    """One sweep on two fresh workers of one CPU slot each, stopped before its CPU time is
    read: a warm trainer (docs/worker.md) reaps the runs it forked and is itself reaped when
    its worker stops, so its own start and every run it forked count, as a cold run's do.
    Without a body: the workers' fixed cost alone (their warm trainers started and stopped).
    """
    with tempfile.TemporaryDirectory() as tmp:
        workers = [
            Worker(
                store, worker_id=f"bench{i}", slots=["cpu"], data_dir=Path(tmp) / str(i),
                trainer_cmd=[sys.executable, "-m", "trainer", "--no-circuit", "--threads", "1"],
                lease_s=60.0, warm_start=not args.cold,
            )
            for i in range(2)
        ]  # fmt: skip
        tasks = [asyncio.create_task(w.run()) for w in workers]
        cpu0, t0 = children_cpu_s(), time.perf_counter()
        try:
            for w in workers:
                await w.ready.wait()
            if body is None:
                await asyncio.gather(*(t.start() for w in workers for t in w.warm.values()))
                result: dict[str, Any] = {}
            else:
                result = await run_sweep(store, body)
        finally:
            for w in workers:
                w.stop(now=True)
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks)
        result["cpu_s"] = children_cpu_s() - cpu0
        result["wall_s"] = time.perf_counter() - t0
        return result


async def bench(uri: str, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    client = connect(uri)
    store = Store(client, f"bench_sweep_{uuid.uuid4().hex[:8]}")
    await store.ensure_indexes()
    base = {"dataset": "digits", "networkLayers": 2, "grouping": 10, "residualLayers": 0,
            "epochs": args.epochs, "batchSize": 64, "gateOptimizer": "softmax", "gates": 500,
            "groupSumTau": 10}  # fmt: skip
    grid = {
        "gateOptimizer": ["softmax", "sparsemax_noise"],
        "gates": [int(g) for g in args.gates.split(",")],
        "groupSumTau": [10, 30],
        "learningRate": [0.003, 0.01, 0.03, 0.1],
    }
    asha = {"type": "asha", "minEpochs": 1, "reductionFactor": 4}
    common = {"base": base, "grid": grid, "maxParallel": 2}
    variants = [
        ("grid", {}),
        ("grid+ASHA", {"scheduler": asha}),
        ("random+ASHA", {"scheduler": asha,
                         "search": {"type": "random", "trials": args.trials, "seed": 1}}),
        ("TPE+ASHA", {"scheduler": asha,
                      "search": {"type": "tpe", "trials": args.trials, "seed": 1}}),
    ]  # fmt: skip
    out = []
    try:
        # What each sweep below pays for its fresh workers before any run: in production a
        # worker's warm trainers start once per slot, not once per sweep.
        fixed = await with_workers(store, None, args)
        print(f"  workers' start: {fixed}", file=sys.stderr, flush=True)
        out.append(("(workers)", fixed))
        for name, extra in variants:
            if args.only and name not in args.only.split(","):
                continue
            result = await with_workers(store, {**common, "name": name, **extra}, args)
            print(f"  {name}: {result}", file=sys.stderr, flush=True)
            out.append((name, result))
    finally:
        await client.drop_database(store.db.name)
        await client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--gates", default="250,500,1000", help="three values: a 48 space")
    parser.add_argument("--cold", action="store_true", help="GATEQUEUE_WARM_START=0's workers")
    parser.add_argument("--only", help="comma-separated variants (grid first for ratios)")
    args = parser.parse_args()
    with mongodb() as (uri, where):
        results = asyncio.run(bench(uri, args))
    starts = "cold starts" if args.cold else "warm starts"
    print(f"machine: {machine()}; MongoDB: {where}; trainer: 1 thread, no circuit, {starts}")
    print(f"digits, {args.epochs} epochs, 2 CPU slots, space 2 x {len(args.gates.split(','))}"
          " x 2 x 4 (gateOptimizer x gates x groupSumTau x learningRate)")  # fmt: skip
    print(f"{'sweep':12} {'runs':>5} {'epochs':>7} {'stopped':>8} {'CPU s':>8} {'wall s':>8} "
          f"{'best val':>9} {'its test':>9} {'CPU/grid':>9} {'test - grid':>12}")  # fmt: skip
    fixed = dict(results).pop("(workers)")["cpu_s"]
    results = [(n, r) for n, r in results if n != "(workers)"]
    grid = dict(results).get("grid")
    for name, r in results:
        ratio = f"{r['cpu_s'] / grid['cpu_s']:.2f}" if grid else "-"
        delta = f"{100 * (r['test'] - grid['test']):+.2f} pp" if grid else "-"
        cells = f"{r['runs']:>5} {r['epochs']:>7} {r['stopped']:>8} {r['cpu_s']:>8.1f} "
        cells += f"{r['wall_s']:>8.1f} {r['val']:>9.4f} {r['test']:>9.4f}"
        print(f"{name:12} {cells} {ratio:>9} {delta:>12}")
    print(f"each sweep's two fresh workers cost {fixed:.1f} CPU s before any run (warm trainer"
          " starts; once per slot in production)")  # fmt: skip
    if grid and fixed < grid["cpu_s"]:
        for name, r in results:
            print(f"  {name}: CPU / grid less that: "
                  f"{(r['cpu_s'] - fixed) / (grid['cpu_s'] - fixed):.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

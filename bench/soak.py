"""The fault soak, longer than CI's (tests/soak_harness.py has the harness and the checks).

    python bench/soak.py [--jobs 300] [--workers 4] [--minutes 5] [--seed 0]

Workers in their own processes, each behind its own wire proxy, run short jobs while random
faults are injected (lost replies after apply, outages of 2-15 s, connection resets, worker
SIGKILL and SIGSTOP, trainer SIGKILL, change-log trims); then the invariants are checked.
Prints the jobs, the faults injected by kind and the violations (must be 0), and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from soak_harness import SoakConfig, run_soak, summary  # noqa: E402

from service.config import Settings  # noqa: E402
from service.mongo import discovery  # noqa: E402
from service.mongo.connect import connect  # noqa: E402
from service.store import Store  # noqa: E402


async def main_async(args: argparse.Namespace, uri: str) -> int:
    client = connect(uri)
    db_name = f"soak_{uuid.uuid4().hex[:8]}"
    try:
        store = Store(client, db_name)
        await store.ensure_indexes()
        config = SoakConfig(
            jobs=args.jobs,
            workers=args.workers,
            inject_for_s=args.minutes * 60,
            outage_s=(2.0, 15.0),
            fault_every_s=(0.5, 3.0),
            settle_s=300.0,
            seed=args.seed,
        )
        with tempfile.TemporaryDirectory(prefix="gatequeue-soak-") as tmp:
            report = await run_soak(store, uri, Path(tmp), config)
        print(summary(report), flush=True)
        return 0 if not report.violations else 1
    finally:
        await client.drop_database(db_name)
        await client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    with discovery.discover(Settings.from_env().mongodb_uri) as mongo:
        print(f"mongodb: {mongo.description}", flush=True)
        return asyncio.run(main_async(args, mongo.uri))


if __name__ == "__main__":
    sys.exit(main())

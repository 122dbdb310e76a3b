"""The fault soak, bounded for CI (tests/soak_harness.py; bench/soak.py runs it longer):
100 jobs on 3 workers in their own processes, each behind its own wire proxy, under random
lost replies, outages, resets, worker SIGKILL and SIGSTOP, trainer SIGKILL and change-log
trims. Every invariant must hold: 0 violations."""

from __future__ import annotations

from pathlib import Path

import pytest
from soak_harness import SoakConfig, run_soak, summary

from service.store import Store


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_fault_soak_has_no_violations(store: Store, mongo_uri: str, tmp_path: Path) -> None:
    report = await run_soak(
        store, mongo_uri, tmp_path, SoakConfig(jobs=100, workers=3, inject_for_s=60, seed=1)
    )
    print("\n[soak]\n" + summary(report), flush=True)
    assert sum(report.faults.values()) >= 20, "the soak injected too few faults to mean much"
    assert report.violations == []

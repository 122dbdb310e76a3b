"""A worker's own `/metrics` (`--metrics-port`, service.worker.prom): claims, runs started
and how they ended, trainer exit codes, slots, read over HTTP after real runs."""

from __future__ import annotations

import aiohttp
from worker_helpers import MakeWorker, finished, insert, trainer, wait_job

from service.store import Store
from service.worker import Worker, prom


async def _scrape(worker: Worker) -> str:
    async with prom.serving(worker.metrics, "127.0.0.1", 0) as port:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                return await resp.text()


async def test_worker_metrics_count_claims_runs_and_exit_codes(
    store: Store, make_worker: MakeWorker
) -> None:
    good = await make_worker(trainer_cmd=trainer("epochs"))
    before = await _scrape(good)
    assert 'gatequeue_worker_claims_total{outcome="won"} 0.0' in before
    assert 'gatequeue_worker_slots{state="free"} 1.0' in before
    done = await wait_job(store, (await insert(store)).id, finished)
    assert done.status == "Succeeded", done.error
    good.stop()
    await good.stopped.wait()  # every run has ended and been counted
    text = await _scrape(good)
    assert 'gatequeue_worker_claims_total{outcome="won"} 1.0' in text
    assert "gatequeue_worker_runs_started_total 1.0" in text
    assert 'gatequeue_worker_runs_ended_total{outcome="Succeeded"} 1.0' in text
    assert 'gatequeue_worker_trainer_exits_total{code="0"} 1.0' in text
    assert 'gatequeue_worker_slots{state="busy"} 0.0' in text

    bad = await make_worker(trainer_cmd=trainer("fail"))
    failed = await wait_job(store, (await insert(store)).id, finished)
    assert failed.status == "Failed"
    bad.stop()
    await bad.stopped.wait()
    text = await _scrape(bad)
    assert 'gatequeue_worker_trainer_exits_total{code="1"} 1.0' in text
    assert 'gatequeue_worker_runs_ended_total{outcome="Failed"} 1.0' in text


def test_the_grafana_dashboard_uses_only_metrics_the_code_exposes() -> None:
    """deploy/grafana/gatequeue.json: every series its queries name is one the API's or a
    worker's registry renders (a renamed metric would leave an empty panel)."""
    import json
    import re
    from pathlib import Path

    from service.api.prom import ApiMetrics

    dashboard = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "gatequeue.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p["targets"]]
    api, worker = ApiMetrics(), prom.WorkerMetrics()
    api.observe("GET", "/jobs", 200, 0.01)
    exposed = (api.render() + worker.render()).decode()
    names = set(re.findall(r"^# TYPE (\w+) (\w+)", exposed, re.M))
    series = {n for n, _ in names} | {f"{n}_{s}" for n, kind in names if kind == "histogram"
                                      for s in ("bucket", "count", "sum")}  # fmt: skip
    series |= {f"{n}_total" for n, kind in names if kind == "counter"}
    used = {m for e in exprs for m in re.findall(r"\b(gatequeue_\w+)", e)}
    assert used and used <= series, used - series
    # the operators' series of docs/api.md and docs/deploy.md each have a panel
    assert used >= {"gatequeue_webhook_deliveries_total", "gatequeue_retries_total",
                    "gatequeue_worker_data_cache_total", "gatequeue_queue_wait_seconds_bucket",
                    "gatequeue_retention_removed_total"}  # fmt: skip

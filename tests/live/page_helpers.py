"""Helpers for the browser tests of the web page (tests/live/test_live_page_*.py): a
headless Debian Chromium whose pages must log no errors, a record of every URL a page asks
for, and finished jobs with metrics, a circuit and files written the way a worker writes
them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job_helpers import insert_job
from live_helpers import TINY_JOB, WORKER
from test_live_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS

from service.jobs.record import JobRecord
from service.jobs.status import Status
from service.store import Store
from service.worker.artifacts import upload_outputs

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "browser"

# What a compiled circuit of a small network looks like (trainer.circuit.build_circuit).
GATE_HISTOGRAM = {
    "FALSE": 3, "A AND B": 41, "A AND NOT B": 18, "A": 64, "NOT A AND B": 17, "B": 58,
    "A XOR B": 36, "A OR B": 44, "NOT (A OR B)": 12, "NOT (A XOR B)": 30, "NOT B": 9,
    "A OR NOT B": 21, "NOT A": 11, "NOT A OR B": 19, "NOT (A AND B)": 15, "TRUE": 2,
}  # fmt: skip
CIRCUIT = {
    "gates": 400, "gatesLive": 312, "depth": 9, "imagesPerS": 2.4e6, "verified": True,
    "disagreements": 0, "gateHistogram": GATE_HISTOGRAM,
}  # fmt: skip
CIRCUIT_FILES = {
    "network.c": "/* a compiled network */\nint predict(void) { return 0; }\n",
    "network.v": "module network(input a, output y); assign y = a; endmodule\n",
    "network.json": '{"format": "gatequeue-difflogic", "layers": []}\n',
}


@dataclass
class Pages:
    """Pages of one browser; every page's errors are collected and checked at the end."""

    browser: Any
    allowed: tuple[str, ...]
    errors: list[str] = field(default_factory=list)

    async def new_page(self, **context: Any) -> Any:
        ctx = await self.browser.new_context(viewport={"width": 1400, "height": 1000}, **context)
        page = await ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

        def on_console(msg: Any) -> None:
            # The browser reports each 4xx answer as a console error; a test names the ones
            # it provokes.
            if msg.type == "error" and not any(f"status of {s}" in msg.text for s in self.allowed):
                self.errors.append(msg.text)

        page.on("console", on_console)
        return page


@asynccontextmanager
async def chromium(*, allowed: tuple[str, ...] = ()) -> AsyncIterator[Pages]:
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pages = Pages(browser, allowed)
        try:
            yield pages
        finally:
            await browser.close()
        assert not pages.errors, f"the page logged errors: {pages.errors}"


def record_urls(page: Any) -> list[str]:
    """Every URL the page requests, WebSockets included, as they happen."""
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    return urls


def metric_rows(epochs: int, quality: float) -> list[dict[str, float]]:
    """Per-epoch metrics that rise towards `quality` (and a loss that falls)."""
    rows = []
    for e in range(1, epochs + 1):
        acc = quality * (1 - 0.6 ** (e + 1))
        rows.append({
            "train_loss": round(2.2 * 0.6**e / quality, 4), "train_acc": round(acc + 0.02, 4),
            "test_acc": round(acc, 4), "test_acc_discrete": round(acc - 0.03, 4),
        })  # fmt: skip
    return rows


async def finished_job(
    store: Store,
    *,
    quality: float = 0.9,
    files: dict[str, str] | None = None,
    tmp: Path | None = None,
    status: Status = Status.SUCCEEDED,
    extra: dict[str, Any] | None = None,
    **options: Any,
) -> JobRecord:
    """A job run to its end as a worker runs one: claimed, one metrics row per epoch,
    latestMetrics, files uploaded to GridFS, then finished with `extra` fields. Options
    are training options, or run options by their request names."""
    from service.jobs.options import RUN_NAMES

    run = {k: options.pop(k) for k in list(options) if k in RUN_NAMES}
    hp = {**TINY_JOB, **options}
    job, _ = await insert_job(store, hp, **run)
    claimed = await store.jobs.claim(job, WORKER, lease_s=60)
    assert claimed is not None
    rows = metric_rows(hp["epochs"], quality)
    for epoch, values in enumerate(rows, start=1):
        await store.metrics.write(job.id, epoch, hp["epochs"], values)
    await store.jobs.set_latest_metrics(
        claimed, {"epoch": len(rows), "epochs": hp["epochs"], **rows[-1]}
    )
    fields = dict(extra or {})
    if files:
        assert tmp is not None
        out = tmp / f"out-{job.id}"
        out.mkdir(parents=True)
        for name, text in files.items():
            (out / name).write_text(text)
        uploaded = await upload_outputs(store.files, job.id, 1, out)
        fields["artifacts"] = [a.model_dump() for a in uploaded]
    current = await store.jobs.get(job.id)
    assert current is not None
    done = await store.jobs.finish(
        current, status, exit_code=0 if status is Status.SUCCEEDED else 1, extra=fields
    )
    assert done is not None and done.status == status
    return done

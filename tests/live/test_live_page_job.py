"""The job view in headless Chromium, on jobs written into the store the way a worker
writes them: the discrete accuracy as the headline, the circuit card of a Succeeded run
(stats, verified badge, gate histogram, plain download links), checkpoints and the memory
estimate, a Pending job's place in the queue (refreshed when another job arrives), and
Compare from the job list's checkboxes (docs/web.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from bson import ObjectId
from job_helpers import insert_job
from live_helpers import TINY_JOB, LiveApi
from page_helpers import CIRCUIT, CIRCUIT_FILES, GATE_HISTOGRAM, SHOTS, chromium, metric_rows
from page_helpers import finished_job as finish_job
from test_live_browser import CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]

GiB = 1 << 30


async def test_circuit_card_checkpoints_and_memory(live_api: LiveApi, tmp_path: Path) -> None:
    from playwright.async_api import expect

    store = live_api.store
    now = datetime.now(UTC)
    checkpoints = [
        {"fileId": ObjectId(), "epoch": e, "step": 0, "length": 3 << 20,
         "attemptId": "9f8e7d6c5b4a39281706f5e4d3c2b1a0", "createdAt": now}
        for e in (3, 4)
    ]  # fmt: skip
    extra = {
        "circuit": CIRCUIT,
        "checkpoints": checkpoints,
        "checkpoint": checkpoints[-1],
        "resumedFrom": {"epoch": 2, "step": 0, "attemptId": "1a2b3c4d5e6f708192a3b4c5d6e7f809"},
        "memoryEstimate": {"cpu": 512 << 20, "cuda": 2 * GiB},
    }
    good = await finish_job(
        store, name="circuit run", gates=400, epochs=4, quality=0.96,
        files=CIRCUIT_FILES, tmp=tmp_path, extra=extra,
    )  # fmt: skip
    bad = await finish_job(
        store, name="unverified run", gates=40, epochs=4, quality=0.8,
        extra={"circuit": {**CIRCUIT, "verified": False, "disagreements": 3}},
    )  # fmt: skip
    last = metric_rows(4, 0.96)[-1]

    async with chromium() as browser:
        page = await browser.new_page(accept_downloads=True)
        await page.goto(f"{live_api.url}/#/jobs/{good.id}")
        await expect(page.locator("#job-title")).to_have_text("circuit run")
        # The headline is the discrete network's accuracy; the relaxed one is secondary.
        await expect(page.locator("#job-acc-value")).to_have_text(
            f"{last['test_acc_discrete'] * 100:.1f}%"
        )
        await expect(page.locator("#job-acc-relaxed")).to_have_text(
            f"relaxed {last['test_acc'] * 100:.1f}%"
        )
        row = page.locator(f'#job-list li[data-id="{good.id}"]')
        await expect(row.locator(".acc")).to_have_text(
            f"acc {last['test_acc_discrete'] * 100:.1f}%"
        )

        card = page.locator("#circuit-card")
        await expect(card).to_be_visible()
        await expect(page.locator("#circuit-verified")).to_have_text("✓ verified")
        stats = await card.locator(".stat dd").all_text_contents()
        assert stats == ["400", "312", "9", "2.40 M images/s"]
        hist = card.locator(".hrow")
        await expect(hist).to_have_count(16)
        assert await hist.locator(".hname").all_text_contents() == list(GATE_HISTOGRAM)
        counts = await hist.locator(".hcount").all_text_contents()
        assert [int(c) for c in counts] == list(GATE_HISTOGRAM.values())
        links = card.locator("#circuit-files a")
        assert await links.all_text_contents() == ["⤓ network.c", "⤓ network.v", "⤓ network.json"]
        href = await links.first.get_attribute("href")
        assert href == f"/jobs/{good.id}/artifacts/network.c"  # a plain link: the cookie signs it
        async with page.expect_download() as info:
            await links.first.click()
        download = await info.value
        assert download.suggested_filename == "network.c"
        saved = tmp_path / "network.c"
        await download.save_as(saved)
        assert saved.read_text() == CIRCUIT_FILES["network.c"]

        await expect(page.locator("#job-checkpoints-text")).to_contain_text(
            "latest at epoch 4 (3.0 MiB"
        )
        await expect(page.locator("#job-checkpoints-text")).to_contain_text(
            "2 kept · resumed from epoch 2 of attempt 1a2b3c4d"
        )
        await expect(page.locator('#job-meta [data-key="memory estimate"] dd')).to_have_text(
            "2.0 GiB GPU · 512 MiB CPU"
        )
        await expect(page.locator("#chart")).to_have_attribute("data-points", "4")
        await page.screenshot(path=SHOTS / "circuit.png")

        await page.goto(f"{live_api.url}/#/jobs/{bad.id}")
        await expect(page.locator("#job-title")).to_have_text("unverified run")
        badge = page.locator("#circuit-verified")
        await expect(badge).to_have_text("✗ 3 disagreements")
        await expect(badge).to_have_class("badge bad")
        await expect(page.locator("#circuit-files a")).to_have_count(0)  # no files stored


async def test_queue_position_follows_the_queue(live_api: LiveApi) -> None:
    from playwright.async_api import expect

    store = live_api.store
    await insert_job(store, TINY_JOB, name="first in line")
    mine, _ = await insert_job(store, TINY_JOB, name="second in line", priority=5)
    await insert_job(store, TINY_JOB, name="ahead by priority", priority=9)

    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live_api.url}/#/jobs/{mine.id}")
        await expect(page.locator("#job-title")).to_have_text("second in line")
        await expect(page.locator('#job-meta [data-key="priority"] dd')).to_have_text("5")
        # Claim order is priority, then age: only the priority 9 job comes first.
        await expect(page.locator("#job-queue")).to_have_text(
            "2nd in queue, waiting for a free slot"
        )
        # Another job with a higher priority arrives: the view asks again.
        await insert_job(store, TINY_JOB, name="urgent", priority=50)
        await expect(page.locator("#job-list li")).to_have_count(4)
        await expect(page.locator("#job-queue")).to_have_text(
            "3rd in queue, waiting for a free slot"
        )
        # The form offers the priority (generated from GET /options).
        await page.goto(f"{live_api.url}/#/new")
        field = page.locator("#submit-form input[name=priority]")
        assert await field.get_attribute("min") == "-100"
        assert await field.get_attribute("max") == "100"


async def test_compare_from_the_job_list(live_api: LiveApi) -> None:
    from playwright.async_api import expect

    store = live_api.store
    a = await finish_job(store, name="small", gates=40, epochs=5, quality=0.8)
    b = await finish_job(store, name="large", gates=400, epochs=5, quality=0.95, learningRate=0.03)
    await finish_job(store, name="not compared", gates=80, epochs=5)

    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live_api.url}/")
        await expect(page.locator("#job-list li")).to_have_count(3)
        await expect(page.locator("#select-bar")).to_be_hidden()
        for job in (a, b):
            await page.locator(f'#job-list li[data-id="{job.id}"] input.pick').check()
        await expect(page.locator("#select-count")).to_have_text("2 selected")
        await page.locator("#compare-btn").click()
        await expect(page).to_have_url(f"{live_api.url}/#/compare/{a.id},{b.id}")
        await expect(page.locator("#compare-title")).to_have_text("Comparing 2 jobs")
        options = page.locator("#compare-options tbody tr")
        await expect(options).to_have_count(3)
        assert await options.locator("th").all_text_contents() == ["gates", "learningRate", "name"]
        assert await options.nth(0).locator("td").all_text_contents() == ["40", "400"]
        charts = page.locator("#compare-charts .chart")
        await expect(charts).to_have_count(2)
        for metric in ("test_acc_discrete", "train_loss"):
            chart = page.locator(f'#compare-charts .chart[data-metric="{metric}"]')
            await expect(chart).to_have_attribute("data-series", "2")
            await expect(chart).to_have_attribute("data-points", "10")
            legend = await chart.locator(".u-legend .u-series th").all_text_contents()
            assert legend[1:] == [f"small ({str(a.id)[-8:]})", f"large ({str(b.id)[-8:]})"]
        # One more metric, one more chart.
        await page.locator('#compare-metrics input[value="test_acc"]').check()
        await expect(charts).to_have_count(3)
        results = page.locator('#compare-results tr[data-result="test_acc_discrete"] td')
        final_a = metric_rows(5, 0.8)[-1]["test_acc_discrete"]
        await expect(results.first).to_have_text(f"{final_a * 100:.1f}%")


async def test_warnings_banner_kept_headline_and_list_mark(live_api: LiveApi) -> None:
    """A Succeeded run that collapsed: the job page shows its warnings in a banner and the
    kept epoch's accuracy as the headline (not the last epoch's); the job list marks it."""
    from playwright.async_api import expect

    store = live_api.store
    result = {"epoch": 2, "val_acc_discrete": 0.2, "test_acc_discrete": 0.197, "test_acc": 0.858,
              "discretization_gap": 0.661}  # fmt: skip
    warnings = [
        {"code": "discretization_gap", "message": "the discrete network scores 0.197"},
        {"code": "collapsed", "message": "the network collapsed: only 13 of 13,336 gates"},
    ]
    bad = await finish_job(
        store, name="collapsed run", epochs=4, quality=0.9,
        extra={"result": result, "warnings": warnings},
    )  # fmt: skip
    good = await finish_job(store, name="healthy run", epochs=4, quality=0.9)

    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live_api.url}/#/jobs/{bad.id}")
        await expect(page.locator("#job-title")).to_have_text("collapsed run")
        banner = page.locator("#job-warnings")
        await expect(banner).to_be_visible()
        await expect(banner.locator("p")).to_have_count(2)
        await expect(banner.locator('p[data-code="collapsed"]')).to_contain_text(
            "only 13 of 13,336 gates"
        )
        await expect(page.locator("#job-acc-value")).to_have_text("19.7%")
        await expect(page.locator("#job-acc-what")).to_have_text(
            "test acc (discrete), kept epoch 2"
        )
        await expect(page.locator("#job-acc-relaxed")).to_have_text("relaxed 85.8%")
        await expect(page.locator(f'#job-list li[data-id="{bad.id}"] .warnmark')).to_have_count(1)
        await expect(page.locator(f'#job-list li[data-id="{good.id}"] .warnmark')).to_have_count(0)
        await page.screenshot(path=SHOTS / "job-warnings.png")

        await page.goto(f"{live_api.url}/#/jobs/{good.id}")
        await expect(page.locator("#job-title")).to_have_text("healthy run")
        await expect(page.locator("#job-warnings")).to_be_hidden()

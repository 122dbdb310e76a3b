"""Sweeps in headless Chromium against the real API and two real workers running the paced
stand-in trainer (whose accuracy grows with gates and learning rate): a 3 x 2 grid
submitted from the page's form fills the sweep's table live to six Succeeded rows, the
overlay chart draws a line per run with the best one highlighted, the scatter a point per
run; two ticked rows compare with only their differing options listed; an Active sweep
is cancelled from its page (docs/web.md, docs/sweeps.md)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from live_helpers import TINY_JOB, LiveApi
from page_helpers import SHOTS, chromium
from test_live_browser import CHROMIUM

from service.client import GateQueueClient
from service.worker import Worker

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]

EPOCHS = 4


async def test_sweep_from_the_form_to_compare(
    live_api: LiveApi, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    from playwright.async_api import expect

    env = {**os.environ, "GQ_EPOCH_S": "0.2"}
    for _ in range(2):
        await start_worker(env=env)

    # The page's 422 for a bad combination names it; every combination is checked first.
    async with chromium(allowed=("422",)) as browser:
        page = await browser.new_page()
        await page.goto(live_api.url + "/")
        await expect(page.locator("#conn")).to_have_text("live")
        await page.locator('.nav a[data-area="sweeps"]').click()
        await expect(page.locator("#sweeps-empty")).to_be_visible()
        await page.locator("#new-sweep-btn").click()
        form = page.locator("#sweep-form")
        await expect(form).to_be_visible()
        await form.locator("#sweep-name").fill("gates x lr")
        rows = form.locator("#grid-rows .grid-row")
        await rows.nth(0).locator("select.opt").select_option("gates")
        await rows.nth(0).locator("input.values").fill("40, 80, 160")
        await form.locator("#add-grid-row").click()
        await rows.nth(1).locator("select.opt").select_option("learningRate")
        await rows.nth(1).locator("input.values").fill("0.01, 0.03")
        await expect(form.locator("#grid-count")).to_have_text("6 combinations")
        await form.screenshot(path=SHOTS / "sweep-form.png")
        await form.locator("#sweep-max-parallel").fill("2")
        await form.locator("#sweep-base input[name=epochs]").fill(str(EPOCHS))
        await form.locator("#sweep-base input[name=networkLayers]").fill("2")
        # residualLayers 4 > networkLayers 2: every combination is refused, none stored.
        await form.locator("#sweep-submit").click()
        banner = form.locator("#sweep-form-error")
        await expect(banner).to_contain_text("combination 0 (gates=40, learningRate=0.01)")
        await expect(form.locator('.field-error[data-for="residualLayers"]')).to_contain_text(
            "must not exceed"
        )
        assert await live_api.store.jobs.collection.count_documents({}) == 0
        await form.locator("#sweep-base input[name=residualLayers]").fill("1")
        await form.locator("#sweep-submit").click()

        await expect(page).to_have_url(re.compile(r"#/sweeps/[0-9a-f]{24}$"))
        sweep_id = page.url.rsplit("/", 1)[1]
        await expect(page.locator("#sweep-title")).to_have_text("gates x lr")
        table = page.locator("#sweep-body tr")
        await expect(table).to_have_count(6)
        heads = await page.locator("#sweep-head th").all_text_contents()
        # Ranked by the validation metric (the form's default), the kept test accuracy beside.
        assert heads[1:] == [
            "#", "gates", "learningRate", "status", "epoch", "val_acc_discrete",
            "test_acc_discrete", "live gates", "images/s",
        ]  # fmt: skip
        # The table fills live over /ws/jobs?sweep=ID.
        await expect(page.locator('#sweep-body tr[data-status="Running"]').first).to_be_visible()
        await expect(page.locator('#sweep-body tr[data-status="Succeeded"]')).to_have_count(6)
        await expect(page.locator("#sweep-status")).to_have_text("Finished")
        await expect(page.locator("#sweep-progress")).to_have_text("6/6 done")
        # maxParallel 2 over two workers: never three at once, by the stored times.
        docs = await live_api.store.jobs.collection.find({}).to_list(None)
        edges = sorted([(d["startedAt"], 1) for d in docs] + [(d["finishedAt"], -1) for d in docs])
        running = [sum(step for _, step in edges[: i + 1]) for i in range(len(edges))]
        assert max(running) <= 2

        # The best run: the most gates and the higher learning rate.
        best = page.locator("#sweep-body tr.best")
        await expect(best).to_have_count(1)
        assert (await best.locator("td").all_text_contents())[2:4] == ["160", "0.03"]
        await expect(page.locator("#sweep-best")).to_contain_text("(gates=160 learningRate=0.03)")
        # Sorting by the metric puts the best first; again, last.
        await page.locator('#sweep-head th[data-sort="value"]').click()
        await expect(table.first).to_have_class("best")
        await page.locator('#sweep-head th[data-sort="value"]').click()
        await expect(table.last).to_have_class("best")
        # The circuits (the stand-in's: 2 x gates, live = half less 100 x learningRate):
        # sorted by live gates, fewest first; by speed, fastest first.
        live_cells = page.locator(f"#sweep-body tr td:nth-child({heads.index('live gates') + 1})")
        await page.locator('#sweep-head th[data-sort="gatesLive"]').click()
        assert await live_cells.all_text_contents() == ["37", "39", "77", "79", "157", "159"]
        await page.locator('#sweep-head th[data-sort="imagesPerS"]').click()
        assert await live_cells.all_text_contents() == ["37", "39", "77", "79", "157", "159"]
        await page.locator('#sweep-head th[data-sort="imagesPerS"]').click()
        assert (await live_cells.all_text_contents())[0] == "159"

        chart = page.locator("#sweep-chart")
        await expect(chart).to_have_attribute("data-series", "6")
        await expect(chart).to_have_attribute("data-points", str(6 * EPOCHS))
        await expect(chart.locator(".u-legend .u-series")).to_have_count(7)  # epoch + 6 runs
        # uPlot's own series: the best run's line is the thick one, and named in the legend.
        widths = await page.evaluate(
            "() => document.getElementById('sweep-chart').uplot.series.slice(1).map((s) => s.width)"
        )
        assert sorted(widths) == [1.5] * 5 + [4]
        await expect(chart.locator(".u-legend .u-series.best")).to_contain_text(
            "gates=160 learningRate=0.03"
        )
        scatter = page.locator("#sweep-scatter")
        await expect(scatter.locator("circle")).to_have_count(6)
        await expect(scatter.locator("circle.best")).to_have_count(1)
        await page.locator("#sweep-scatter-x").select_option("learningRate")
        await expect(scatter.locator("text.label").first).to_have_text("learningRate")
        await expect(scatter.locator("circle")).to_have_count(6)
        await page.locator("#sweep-head th[data-sort='index']").click()
        await page.locator("#sweep-table").screenshot(path=SHOTS / "sweep-table.png")
        await page.locator("#sweep-chart").locator("..").screenshot(path=SHOTS / "sweep-chart.png")

        # Runs 0 and 2 differ in gates only (and so in their names): compare them.
        for index in (0, 2):
            await page.locator(f'#sweep-body tr[data-index="{index}"] input.pick').check()
        await expect(page.locator("#sweep-compare")).to_have_text("Compare 2 selected")
        await page.locator("#sweep-compare").click()
        await expect(page).to_have_url(re.compile(r"#/compare/[0-9a-f]{24},[0-9a-f]{24}$"))
        options = page.locator("#compare-options tbody tr")
        await expect(options).to_have_count(2)
        assert await options.locator("th").all_text_contents() == ["gates", "name"]
        assert await options.nth(0).locator("td").all_text_contents() == ["40", "80"]
        await expect(page.locator("#compare-charts .chart")).to_have_count(2)
        first = page.locator("#compare-charts .chart").first
        await expect(first).to_have_attribute("data-series", "2")
        await expect(first).to_have_attribute("data-points", str(2 * EPOCHS))
        await page.screenshot(path=SHOTS / "compare.png", full_page=True)

        # An Active sweep is cancelled from its page.
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{live_api.url}/sweeps", json={
                "name": "to be cancelled", "base": {**TINY_JOB, "epochs": 500},
                "grid": {"gates": [40, 80, 120]},
            }) as resp,
        ):  # fmt: skip
            assert resp.status == 201, await resp.text()
            doomed = (await resp.json())["id"]
        await page.goto(f"{live_api.url}/#/sweeps/{doomed}")
        await expect(page.locator('#sweep-body tr[data-status="Running"]')).to_have_count(2)
        await page.locator("#sweep-cancel").click()
        await expect(page.locator("#sweep-note")).to_have_text(
            "Cancelled 1 pending run; 2 stopping."
        )
        await expect(page.locator("#sweep-status")).to_have_text("Cancelled")
        await expect(page.locator('#sweep-body tr[data-status="Cancelled"]')).to_have_count(3)
        await expect(page.locator("#sweep-cancel")).to_be_disabled()

        # The sweeps list has both, newest first.
        await page.locator('.nav a[data-area="sweeps"]').click()
        listed = page.locator("#sweeps-body tr")
        await expect(listed).to_have_count(2)
        assert await listed.locator("td:first-child").all_text_contents() == [
            "to be cancelled",
            "gates x lr",
        ]
        await expect(listed.nth(1).locator("td").nth(2)).to_have_text("6/6 done")
        assert sweep_id != doomed


async def test_random_sweep_from_the_form(live_api: LiveApi) -> None:
    """Random samples only, no worker: the runs wait in the queue, and a run's page says
    where it stands and which sweep it belongs to."""
    from playwright.async_api import expect

    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live_api.url}/#/sweeps/new")
        form = page.locator("#sweep-form")
        await form.locator("#grid-rows .grid-row button").click()  # no grid at all
        await expect(form.locator("#grid-rows .grid-row")).to_have_count(0)
        await form.locator("#random-details summary").click()
        await form.locator("#random-n").fill("4")
        await form.locator("#random-seed").fill("3")  # both optimizers drawn
        await form.locator("#add-random-row").click()
        await form.locator("#add-random-row").click()
        rows = form.locator("#random-rows .random-row")
        await rows.nth(0).locator("select.opt").select_option("learningRate")
        await rows.nth(0).locator("select.dist").select_option("logUniform")
        await rows.nth(0).locator("input.values").fill("0.001, 0.1")
        await rows.nth(1).locator("select.opt").select_option("gateOptimizer")
        await rows.nth(1).locator("select.dist").select_option("choice")
        await rows.nth(1).locator("input.values").fill("softmax, entmax")
        await form.locator("#sweep-priority").fill("7")
        await form.locator("#sweep-submit").click()
        await expect(page).to_have_url(re.compile(r"#/sweeps/[0-9a-f]{24}$"))
        sweep_id = page.url.rsplit("/", 1)[1]
        await expect(page.locator('#sweep-body tr[data-status="Pending"]')).to_have_count(4)
        heads = await page.locator("#sweep-head th").all_text_contents()
        assert heads[2:4] == ["learningRate", "gateOptimizer"]
        rates = await page.locator("#sweep-body tr td:nth-child(3)").all_text_contents()
        assert all(0.001 <= float(r) <= 0.1 for r in rates), rates
        await expect(page.locator('#sweep-meta [data-key="priority"] dd')).to_have_text("7")
        await expect(page.locator("#sweep-chart-empty")).to_be_visible()
        await expect(page.locator("#sweep-scatter circle")).to_have_count(0)

        await page.locator('#sweep-body tr[data-index="2"] td:nth-child(2) a').click()
        await expect(page.locator("#job-queue")).to_have_text(
            "3rd in queue, waiting for a free slot"
        )
        await expect(page.locator('#job-meta [data-key="priority"] dd')).to_have_text("7")
        await page.locator('#job-meta [data-key="sweep"] a').click()
        await expect(page).to_have_url(f"{live_api.url}/#/sweeps/{sweep_id}")


async def test_a_sweep_over_seeds_and_a_test_metric_on_its_page(
    live_api: LiveApi, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    """2 x 1 combinations x 3 seeds ranked by a test metric: the page's banner says the
    selection is biased, the combinations table has the two means ± std with n 3/3 and
    the best starred, and the chart draws each combination's mean with a band."""
    from playwright.async_api import expect

    from service.client import GateQueueClient

    for _ in range(2):
        await start_worker(env={**os.environ, "GQ_EPOCH_S": "0.05"})
    async with GateQueueClient(live_api.url) as client:
        sweep = await client.submit_sweep(
            base={**TINY_JOB, "epochs": 3}, grid={"gates": [40, 160]}, seeds=3,
            metric="test_acc_discrete", name="seeds on the page",
        )  # fmt: skip
        final = await client.wait_sweep(sweep["id"], timeout_s=60)
    assert final["counts"]["Succeeded"] == 6
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live_api.url}/#/sweeps/{sweep['id']}")
        await expect(page.locator("#sweep-title")).to_have_text("seeds on the page")
        await expect(page.locator('#sweep-warnings p[data-code="test_selection"]')).to_contain_text(
            "biased"
        )
        rows = page.locator("#sweep-combos-body tr")
        await expect(rows).to_have_count(2)
        best = page.locator("#sweep-combos-body tr.best")
        await expect(best).to_have_attribute("data-combination", "1")  # 160 gates
        cells = await best.locator("td").all_text_contents()
        assert cells[1] == "160" and "±" in cells[2] and cells[2].endswith("★")
        assert cells[3] == "3/3"
        chart = page.locator("#sweep-chart")
        await expect(chart).to_have_attribute("data-series", "2")  # one mean per combination
        bands = await page.evaluate(
            "() => document.getElementById('sweep-chart').uplot.bands.length"
        )
        assert bands == 2
        await expect(page.locator("#sweep-best")).to_contain_text("(n=3)")


async def test_a_scheduled_sweep_shows_rungs_trials_and_compute(
    live_api: LiveApi, client: GateQueueClient, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    """An ASHA sweep's page: a rung column (each run's rung, or where it was stopped), the
    trials done / asked / total and the epochs trained against a full grid's."""
    from playwright.async_api import expect

    rungs = os.path.join(os.path.dirname(__file__), "..", "worker", "trainers", "rungs.py")
    await start_worker(trainer_cmd=[sys.executable, rungs], env=dict(os.environ))
    sweep = await client.submit_sweep(
        base={**TINY_JOB, "epochs": 4}, grid={"gates": [40, 50, 60, 70, 80, 90]},
        scheduler={"type": "asha", "minEpochs": 1, "reductionFactor": 2}, max_parallel=1,
    )  # fmt: skip
    final = await client.wait_sweep(sweep["id"], timeout_s=60)
    stopped = [r for r in final["jobs"] if r["stoppedEarly"]]
    assert stopped and final["compute"]["gridEpochs"] == 24
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live_api.url}/#/sweeps/{sweep['id']}")
        await expect(page.locator("#sweep-body tr")).to_have_count(6)
        heads = await page.locator("#sweep-head th").all_text_contents()
        assert "rung" in heads
        column = heads.index("rung")
        texts = {
            await row.get_attribute("data-id"): await row.locator("td").nth(column).text_content()
            for row in await page.locator("#sweep-body tr").all()
        }
        for run in final["jobs"]:
            st = run["stoppedEarly"]
            want = f"stopped at {st['epoch']} (rung {st['rung']})" if st else "—"
            assert texts[run["id"]] == want, (texts, run)
        meta = page.locator("#sweep-meta")
        await expect(meta.locator('[data-key="trials"] dd')).to_have_text("6 done / 6 asked / 6")
        c = final["compute"]
        share = round(100 * c["epochs"] / 24)
        await expect(meta.locator('[data-key="compute"] dd')).to_have_text(
            f"{c['epochs']} epochs of 24 ({share}% of a full grid); {len(stopped)} stopped early"
        )
        await page.screenshot(path=SHOTS / "sweep-asha.png", full_page=True)

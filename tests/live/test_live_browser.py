"""The web page end to end in headless Chromium: the real API, a real worker (running a
paced stand-in trainer) and the test MongoDB. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from live_helpers import LiveApi

from service.client import GateQueueClient
from service.worker import Worker
from trainer.parametrizations import GATE_OPTIMIZERS, REGISTRY

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Waits for things the page shows; generous because CI machines are slow, never a sleep.
WAIT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    out = Path(request.config.rootpath) / "test-artifacts" / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
async def page(artifacts: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        def on_console(msg: Any) -> None:
            # The browser reports every 4xx as a console error; the test provokes a 422.
            if msg.type == "error" and "status of 422" not in msg.text:
                errors.append(msg.text)

        page.on("console", on_console)
        yield page
        await browser.close()
        assert not errors, f"the page logged errors: {errors}"


async def test_submit_follow_and_cancel_in_the_browser(
    live_api: LiveApi,
    start_worker: Callable[..., Awaitable[Worker]],
    page: Any,
    artifacts: Path,
) -> None:
    from playwright.async_api import expect

    await start_worker()
    await page.goto(live_api.url + "/")
    await expect(page.locator("#conn")).to_have_text("live")
    form = page.locator("#submit-form")
    await expect(form).to_be_visible()
    options = await form.locator("select[name=gateOptimizer] option").all_text_contents()
    assert tuple(options) == GATE_OPTIMIZERS
    assert await form.locator("select[name=gateOptimizer]").input_value() == "sparsemax_noise"
    await page.screenshot(path=artifacts / "01-new-job-form.png")
    # A null default says what it stands for: the learning rate is the gate optimizer's.
    rate = form.locator("input[name=learningRate]")
    assert await rate.input_value() == ""
    assert "the gate optimizer's" in (await rate.get_attribute("placeholder") or "")
    assert await form.locator("select[name=gateEstimator]").input_value() == "straight_through"

    # A bad value comes back as a 422 and is shown next to its field.
    await form.locator("input[name=residualLayers]").fill("9")
    await form.locator("button[type=submit]").click()
    await expect(form.locator('.field-error[data-for="residualLayers"]')).to_contain_text(
        "must not exceed"
    )
    await page.screenshot(path=artifacts / "02-validation-error.png")

    # A tiny job from the form: its log and chart fill up live, then it Succeeds.
    await form.locator("input[name=residualLayers]").fill("2")
    await form.locator("input[name=gates]").fill("200")
    await form.locator("input[name=epochs]").fill("4")
    await form.locator("summary").click()
    await form.locator("input[name=name]").fill("browser: tiny run")
    await form.locator("button[type=submit]").click()
    await expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{24}$"))
    first_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#job-title")).to_have_text("browser: tiny run")
    await expect(page.locator("#log .ln").first).to_be_visible()
    await expect(page.locator("#chart")).not_to_have_attribute("data-points", "0")
    await expect(page.locator("#chart canvas")).to_have_count(1)
    await page.screenshot(path=artifacts / "03-job-running.png", full_page=True)
    await expect(page.locator("#job-status")).to_have_text("Succeeded")
    await expect(page.locator("#chart")).to_have_attribute("data-points", "4")
    await expect(page.locator("#log .end")).to_contain_text("Succeeded")
    # 1 system line + 2 start lines + 4 epochs x (8 steps + EPOCH) + CIRCUIT + "done" +
    # SUMMARY, then the system lines of the saved files and of the circuit
    await expect(page.locator("#log .ln")).to_have_count(1 + 2 + 4 * 9 + 1 + 1 + 1 + 2)
    await expect(page.locator("#log")).to_contain_text("circuit: 399 of 800 gates live, depth 4")
    await expect(page.locator("#cancel-btn")).to_be_disabled()
    # The run's file is offered and downloads with its bytes.
    file_button = page.locator("#job-files a.file")
    await expect(file_button).to_have_text("⤓ network.txt")
    async with page.expect_download() as download_info:
        await file_button.click()
    download = await download_info.value
    assert download.suggested_filename == "network.txt"
    saved = artifacts / "downloaded-network.txt"
    await download.save_as(saved)
    assert saved.read_text() == "a stand-in network\n"
    await page.screenshot(path=artifacts / "04-job-succeeded.png", full_page=True)

    # A long job: follow it, pause the log, then cancel it; it turns Cancelled.
    await page.locator("#new-btn").click()
    await form.locator("input[name=epochs]").fill("500")
    await form.locator("input[name=name]").fill("browser: to be cancelled")
    await form.locator("button[type=submit]").click()
    await expect(page).not_to_have_url(re.compile(first_id))
    await expect(page.locator("#job-status")).to_have_text("Running")
    await expect(page.locator("#log .ln").nth(5)).to_be_visible()
    await page.locator("#follow-btn").click()  # pause: new lines are held, not shown
    await expect(page.locator("#follow-btn")).to_have_text("Follow")
    await expect(page.locator("#jump-btn")).to_be_visible()
    await page.screenshot(path=artifacts / "05-log-paused.png", full_page=True)
    await page.locator("#jump-btn").click()
    await expect(page.locator("#follow-btn")).to_have_text("Pause")
    await page.locator("#cancel-btn").click()
    await expect(page.locator("#job-status")).to_have_text("Cancelled")
    await expect(page.locator("#log .end")).to_contain_text("Cancelled")
    items = page.locator("#job-list li")
    await expect(items).to_have_count(2)
    await expect(items.nth(0)).to_have_attribute("data-status", "Cancelled")
    await expect(items.nth(1)).to_have_attribute("data-status", "Succeeded")
    await page.screenshot(path=artifacts / "06-job-cancelled.png", full_page=True)

    final = await live_api.store.jobs.get(first_id)
    assert final is not None
    assert final.status == "Succeeded"
    # Left empty, the learning rate is stored as the one the run used.
    assert final.hyperparameters["learningRate"] == REGISTRY["sparsemax_noise"].learning_rate


async def test_a_preset_fills_the_form(live_api: LiveApi, page: Any) -> None:
    """Picking a named conv configuration (trainer/presets.py) fills the fields it sets and
    shows its gate count; the fields stay editable and the preset itself is not sent."""
    from playwright.async_api import expect

    from trainer.presets import PRESETS

    await page.goto(live_api.url + "/")
    form = page.locator("#submit-form")
    await expect(form).to_be_visible()
    preset = form.locator("select[aria-label=Preset]")
    assert (await preset.locator("option").all_text_contents())[1:] == list(PRESETS)
    await preset.select_option("cifar10-large")
    await expect(form.locator("select[name=architecture]")).to_have_value("conv")
    await expect(form.locator("input[name=convChannels]")).to_have_value("2048,4096,8192,8192")
    await expect(form.locator("input[name=dataset]")).to_have_value("cifar10")
    gates = f"{PRESETS['cifar10-large'].gates():,}"
    await expect(form).to_contain_text(f"{gates} gates (paper: 61,000,000)")


async def test_the_data_sets_view_shows_an_images_shape(
    live_api: LiveApi, client: GateQueueClient, page: Any, tmp_path: Path
) -> None:
    """An uploaded (n, 8, 8) npz is listed with its image shape (what a conv run needs),
    beside the built-ins' (docs/datasets.md, "Images"); a table of rows shows its bits only."""
    import io

    import numpy as np
    from playwright.async_api import expect

    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    for name, x in (("imgs", rng.integers(0, 200, (60, 8, 8))),
                    ("rows", rng.normal(0, 1, (60, 5)))):  # fmt: skip
        buf = io.BytesIO()
        np.savez(buf, x_train=x, y_train=y)
        (tmp_path / f"{name}.npz").write_bytes(buf.getvalue())
        await client.upload_dataset(tmp_path / f"{name}.npz", name=name, bits=2)
    await page.goto(live_api.url + "/#/datasets")
    body = page.locator("#datasets-body")
    await expect(body.locator("tr[data-name=imgs]")).to_contain_text("128 (8x8x2)")
    await expect(body.locator("tr[data-name=digits]")).to_contain_text("256 (8x8x4)")
    await expect(body.locator("tr[data-name=rows]")).to_contain_text("10")
    assert "x" not in (await body.locator("tr[data-name=rows] td").nth(3).inner_text())

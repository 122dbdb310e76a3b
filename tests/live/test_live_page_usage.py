"""The page's "Usage" view (#/usage) in headless Chromium: a signed-in user sees their own
jobs, slot-hours and storage (from GET /usage), never another user's."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from bson import ObjectId
from live_helpers import MakeLiveApi
from page_helpers import SHOTS, chromium
from test_live_browser import CHROMIUM
from test_live_page_signin import sign_in, submit_as

from service import tokens
from service.jobs.record import utcnow
from service.tokens import Role

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]


async def test_the_usage_view_shows_the_signed_in_users_own(
    make_live_api: MakeLiveApi, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    path = tmp_path / "tokens.json"
    secrets = {name: tokens.add(path, name, Role.SUBMIT) for name in ("alice", "bob")}
    api = await make_live_api(tokens_file=path)
    now = utcnow()
    ran = {"alice": (3, "0", 2.0), "bob": (5, "cpu", 4.0)}  # hours ago, slot, hours run
    for name, (started_h, gpu, hours) in ran.items():
        job_id = await submit_as(api, secrets[name], f"{name}'s run")
        await api.store.jobs.collection.update_one({"_id": ObjectId(job_id)}, {"$set": {
            "status": "Succeeded", "worker": {"id": "w", "host": "h", "gpu": gpu},
            "startedAt": now - timedelta(hours=started_h),
            "finishedAt": now - timedelta(hours=started_h - hours)}})  # fmt: skip
        await api.store.logs.append(ObjectId(job_id), "stdout", ["x" * 2048])

    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(api.url + "/#/usage")
        await sign_in(page, secrets["alice"])
        await page.goto(api.url + "/#/usage")
        view = page.locator("#view-usage")
        await expect(view).to_be_visible()
        await expect(page.locator("#usage-who")).to_have_text("as alice")
        for period in ("all time", "last 30 days"):
            row = page.locator(f'#usage-body tr[data-period="{period}"]')
            await expect(row.locator(".jobs")).to_have_text("1 Succeeded")
            await expect(row.locator(".gpu")).to_have_text("2.00")
            await expect(row.locator(".cpu")).to_have_text("0.00")  # bob's 4 CPU hours: his
            await expect(row.locator(".logs")).to_have_text("2.0 KiB")
            await expect(row.locator(".files")).to_have_text("0 B")
        await expect(page.locator('.nav a[data-area="usage"]')).to_have_attribute(
            "aria-current", "page"
        )
        await page.screenshot(path=SHOTS / "usage.png")

"""The page's sign-in, in headless Chromium against an API with a tokens file: the token is
pasted once and traded for the HttpOnly session cookie; it is never kept in
`localStorage`, `sessionStorage` or `document.cookie`, nor put in any URL the page asks
for (WebSockets included). The page shows who is signed in, hides the submit form from a
reader and the cancel button on other people's jobs, and signs out (docs/web.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from live_helpers import TINY_JOB, LiveApi, MakeLiveApi
from page_helpers import SHOTS, chromium, record_urls
from test_live_browser import CHROMIUM

from service import tokens
from service.tokens import Role

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]

STORAGE = """() => JSON.stringify({
  local: Object.entries(localStorage), session: Object.entries(sessionStorage),
  cookie: document.cookie })"""


async def submit_as(api: LiveApi, secret: str, name: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{api.url}/jobs", json={**TINY_JOB, "epochs": 500, "name": name},
            headers={"Authorization": f"Bearer {secret}"},
        ) as resp,
    ):  # fmt: skip
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])


async def sign_in(page: Any, secret: str) -> None:
    from playwright.async_api import expect

    dialog = page.locator("#signin-dialog")
    await expect(dialog).to_be_visible()
    await page.locator("#token-input").fill(secret)
    async with page.expect_navigation():  # signed in, the page reloads as the new user
        await page.locator("#signin-submit").click()


async def test_sign_in_keeps_no_token_and_shows_what_the_role_allows(
    make_live_api: MakeLiveApi, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    path = tmp_path / "tokens.json"
    secrets = {
        name: tokens.add(path, name, role)
        for name, role in (("alice", Role.SUBMIT), ("bob", Role.SUBMIT), ("reader", Role.READ))
    }
    api = await make_live_api(tokens_file=path)
    bobs = await submit_as(api, secrets["bob"], "bob's run")
    alices = await submit_as(api, secrets["alice"], "alice's run")

    # A wrong token is a 401 the page reports; that one console error is expected.
    async with chromium(allowed=("401",)) as browser:
        page = await browser.new_page()
        urls = record_urls(page)
        await page.goto(api.url + "/")
        await expect(page.locator("#signin-dialog")).to_be_visible()
        await expect(page.locator("#whoami")).to_have_text("not signed in")
        await expect(page.locator("#view-signed-out")).to_be_visible()
        await page.locator("#token-input").fill(secrets["alice"])
        await page.screenshot(path=SHOTS / "signin.png")
        await page.locator("#token-input").fill("gq_not-a-token")
        await page.locator("#signin-submit").click()
        await expect(page.locator("#signin-error")).to_have_text("That token is not valid here.")
        await expect(page.locator("#token-input")).to_have_value("")  # not kept, even there
        await page.locator("#token-input").fill(secrets["alice"])

        async with page.expect_navigation():
            await page.locator("#signin-submit").click()
        await expect(page.locator("#whoami")).to_have_text("alice · submit")
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(page.locator("#signin-dialog")).to_be_hidden()
        await expect(page.locator("#submit-form")).to_be_visible()
        await expect(page.locator("#signout-btn")).to_be_visible()
        rows = page.locator("#job-list li")
        await expect(rows).to_have_count(2)
        await expect(rows.filter(has_text="bob's run").locator(".by")).to_have_text("by bob")
        await expect(rows.filter(has_text="alice's run").locator(".by")).to_have_text("by alice")

        # Another's job: no cancel button; one's own: there is one.
        await page.goto(f"{api.url}/#/jobs/{bobs}")
        await expect(page.locator("#job-title")).to_have_text("bob's run")
        await expect(page.locator('#job-meta [data-key="submitted by"] dd')).to_have_text("bob")
        await expect(page.locator("#cancel-btn")).to_be_hidden()
        await page.goto(f"{api.url}/#/jobs/{alices}")
        await expect(page.locator("#job-title")).to_have_text("alice's run")
        await expect(page.locator("#cancel-btn")).to_be_visible()
        await expect(page.locator("#log-state")).to_have_text("· live")  # the log socket too

        cookies = await page.context.cookies(api.url)
        [session] = [c for c in cookies if c["name"] == "gq_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        kept = await page.evaluate(STORAGE)
        for secret in secrets.values():
            assert secret not in kept
        assert "gq_session" not in kept  # HttpOnly: scripts cannot read it
        assert urls and any("/ws/jobs" in u for u in urls)
        assert any("/logs/ws" in u for u in urls)
        for u in urls:
            assert "token" not in u.lower() and secrets["alice"] not in u, u

        # Sign out: the session ends and the page asks again.
        async with page.expect_navigation():
            await page.locator("#signout-btn").click()
        await expect(page.locator("#signin-dialog")).to_be_visible()
        await expect(page.locator("#whoami")).to_have_text("not signed in")
        assert not [c for c in await page.context.cookies(api.url) if c["name"] == "gq_session"]

        # A reader follows jobs but has no submit form and no cancel button.
        await sign_in(page, secrets["reader"])
        await expect(page.locator("#whoami")).to_have_text("reader · read")
        await page.goto(f"{api.url}/#/new")
        await expect(page.locator("#readonly-note")).to_be_visible()
        await expect(page.locator("#submit-form")).to_be_hidden()
        await expect(page.locator("#new-btn")).to_be_hidden()
        await expect(page.locator("#job-list li")).to_have_count(2)
        await page.goto(f"{api.url}/#/jobs/{alices}")
        await expect(page.locator("#job-title")).to_have_text("alice's run")
        await expect(page.locator("#cancel-btn")).to_be_hidden()
        await page.goto(f"{api.url}/#/sweeps")
        await expect(page.locator("#sweeps-empty")).to_be_visible()
        await expect(page.locator("#new-sweep-btn")).to_be_hidden()
        await page.goto(f"{api.url}/#/sweeps/new")
        await expect(page.locator("#sweep-readonly-note")).to_be_visible()
        await expect(page.locator("#sweep-form")).to_be_hidden()
        kept = await page.evaluate(STORAGE)
        for secret in secrets.values():
            assert secret not in kept
        for u in urls:
            assert not any(s in u for s in secrets.values()), u

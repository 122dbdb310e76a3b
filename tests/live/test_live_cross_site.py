"""In headless Chromium, a page of another origin, opened in the same browser as the API's
user, can neither cancel a job nor read /ws/jobs or a log tail (docs/security.md).

Before: in open mode such a page cancelled a running job with
`fetch('http://127.0.0.1:8080/jobs/ID/cancel', {method: 'POST', mode: 'no-cors'})` (202)
and read every job document from `new WebSocket('ws://127.0.0.1:8080/ws/jobs')`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from live_helpers import MakeLiveApi, running_job
from test_live_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]

ATTACK = """<!doctype html><meta charset="utf-8"><title>cat pictures</title><script>
const API = %(api)s, JOB = %(job)s;
const results = {};
const ws = API.replace("http", "ws");
async function attempt(name, fn) {
  try { results[name] = await fn(); } catch (e) { results[name] = "error: " + e.name; }
}
function socket(url) {
  return new Promise((resolve) => {
    const s = new WebSocket(url);
    let messages = 0;
    s.onmessage = () => { messages += 1; };
    s.onclose = (e) => resolve({opened: s.readyState, messages, code: e.code});
    setTimeout(() => { s.close(); resolve({messages, open: true}); }, 3000);
  });
}
(async () => {
  await attempt("cancel no-cors", async () => {
    const r = await fetch(`${API}/jobs/${JOB}/cancel`,
      {method: "POST", mode: "no-cors", credentials: "include", body: "{}"});
    return r.type;
  });
  await attempt("cancel as json", async () => {
    const r = await fetch(`${API}/jobs/${JOB}/cancel`, {method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json"}, body: "{}"});
    return r.status;
  });
  await attempt("form post", async () => {
    const r = await fetch(`${API}/jobs`, {method: "POST", mode: "no-cors", credentials: "include",
      headers: {"Content-Type": "text/plain"},
      body: JSON.stringify({gateOptimizer: "softmax", gates: 40, epochs: 1000})});
    return r.type;
  });
  await attempt("read jobs", async () => {
    const r = await fetch(`${API}/jobs`, {credentials: "include"});
    return (await r.text()).length;
  });
  results["ws jobs"] = await socket(`${ws}/ws/jobs`);
  results["ws log"] = await socket(`${ws}/jobs/${JOB}/logs/ws`);
  window.results = results;
})();
</script>"""


@pytest.fixture
async def attacker() -> AsyncIterator[Any]:
    """Another site: `localhost` is not the same site as the API's `127.0.0.1`."""
    pages: dict[str, str] = {}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.match_info["name"]], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield pages, f"http://localhost:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("mode", ["open", "signed in"])
async def test_another_sites_page_can_neither_cancel_nor_read(
    make_live_api: MakeLiveApi, attacker: Any, mode: str
) -> None:
    from playwright.async_api import async_playwright

    token = "victims-token" if mode == "signed in" else None
    api = await make_live_api(token=token)
    job = await running_job(api.store)
    pages, attacker_url = attacker
    pages["attack.html"] = ATTACK % {"api": json.dumps(api.url), "job": json.dumps(str(job.id))}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = await browser.new_context()
        if token is not None:  # the victim is signed in to the API in this browser
            resp = await context.request.post(
                f"{api.url}/session", data="{}",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )  # fmt: skip
            assert resp.status == 201
            assert any(c["name"] == "gq_session" for c in await context.cookies(api.url))
        page = await context.new_page()
        await page.goto(f"{attacker_url}/attack.html")
        results = await page.wait_for_function("window.results", timeout=30_000)
        outcome = await results.json_value()
        await browser.close()
    print(f"\n[cross-site, {mode}] {outcome}", flush=True)
    after = await api.store.jobs.get(job.id)
    assert after is not None and after.status == "Running" and not after.cancelRequested
    assert await api.store.jobs.collection.count_documents({}) == 1  # nothing submitted
    assert outcome["cancel as json"].startswith("error")  # the preflight is never granted
    assert outcome["read jobs"].startswith("error")  # no CORS: the page cannot read
    for name in ("ws jobs", "ws log"):
        assert outcome[name]["messages"] == 0, (name, outcome[name])
        assert not outcome[name].get("open"), (name, outcome[name])

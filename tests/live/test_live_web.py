"""The web page and its static files: served from the package, nothing from a CDN."""

from __future__ import annotations

import re

import aiohttp
from live_helpers import LiveApi

from service.api.routes_web import STATIC_DIR
from trainer.parametrizations import GATE_OPTIMIZERS


async def test_page_and_assets_are_local(live_api: LiveApi) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(live_api.url + "/") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
            html = await resp.text()
        refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
        assert refs, "the page references its assets"
        for ref in refs:
            assert not re.match(r"^(https?:)?//", ref), f"external asset {ref}"
            if ref.startswith("data:"):
                continue
            async with http.get(f"{live_api.url}/{ref}") as asset:
                assert asset.status == 200, ref
        # The form is built from /options (the one definition of every option).
        async with http.get(live_api.url + "/options") as resp:
            described = await resp.json()
        [optimizer] = [o for o in described["training"] if o["name"] == "gateOptimizer"]
        assert optimizer["choices"] == list(GATE_OPTIMIZERS)
        assert described["finished"] == ["Succeeded", "Failed", "Cancelled"]
        for path in ("/static/../api/ws.py", "/static/%2e%2e/api/ws.py", "/static/nope.js"):
            async with http.get(live_api.url + path) as resp:
                assert resp.status == 404, path
                assert (await resp.json())["error"]["code"] == "not_found"


def test_the_chart_library_is_vendored_with_its_license() -> None:
    vendor = STATIC_DIR / "vendor"
    assert (
        (vendor / "uPlot.iife.min.js")
        .read_text()
        .startswith("/*! https://github.com/leeoniya/uPlot")
    )
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text()
    for name in ("app.js", "app.css", "index.html"):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"https?://|url\(", text), f"{name} refers outside the package"

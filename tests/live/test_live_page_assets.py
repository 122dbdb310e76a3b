"""The page's ES modules: each is imported by another (app.js is the entry), served as
JavaScript (module scripts are refused otherwise, with `nosniff`), refers to nothing
outside the package, and keeps no token: no Web Storage, no `token=` in a URL, no inline
script or style that the Content-Security-Policy would refuse (docs/web.md)."""

from __future__ import annotations

import re

import aiohttp
from live_helpers import LiveApi

from service.api.routes_web import STATIC_DIR

MODULES = sorted((STATIC_DIR / "js").glob("*.js"))
IMPORT = re.compile(r'^import [^;]+ from "(\./[\w/.-]+\.js)";$', re.M)


def imports(path: str) -> set[str]:
    """The files a module imports, relative to STATIC_DIR."""
    base = (STATIC_DIR / path).parent
    return {
        str((base / m).resolve().relative_to(STATIC_DIR))
        for m in IMPORT.findall((STATIC_DIR / path).read_text())
    }


def test_every_module_is_reached_from_app_js() -> None:
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for dep in imports(path):
            assert (STATIC_DIR / dep).is_file(), f"{path} imports {dep}, which is missing"
            todo.append(dep)
    assert {f"js/{m.name}" for m in MODULES} <= seen, "a module nobody imports"
    assert len(MODULES) >= 10


def test_modules_keep_no_token_and_stay_in_the_package() -> None:
    for path in [STATIC_DIR / "app.js", *MODULES]:
        text = path.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path.name
        assert "localStorage" not in text and "sessionStorage" not in text, path.name
        assert "token=" not in text, path.name
        assert "document.cookie" not in text, path.name
        assert ".innerHTML" not in text, path.name  # text goes in as text, never as markup
        assert 'setAttribute("style"' not in text, path.name  # refused by the CSP
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script"
    assert " style=" not in html and "<style" not in html, "an inline style"
    assert '<script type="module" src="static/app.js">' in html


async def test_modules_are_served_as_javascript(live_api: LiveApi) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(live_api.url + "/") as resp:
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "style-src 'self'" in csp
        for path in ["app.js", *(f"js/{m.name}" for m in MODULES)]:
            async with http.get(f"{live_api.url}/static/{path}") as resp:
                assert resp.status == 200, path
                assert resp.content_type in ("text/javascript", "application/javascript"), (
                    path,
                    resp.content_type,
                )
                assert resp.headers["X-Content-Type-Options"] == "nosniff"

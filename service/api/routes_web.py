"""The web page at `/` and its static files, shipped inside the package.

Nothing is fetched from a CDN: the charting library is vendored under `static/vendor/`,
so the page works on a machine with no internet. The page itself holds no secret and is
served without the API token; the calls it makes carry the token the user gives it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from service.api.routing import Param, Reply, Route

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The page is small and changes with the package: make browsers revalidate every time
# rather than run a stale app.js against a newer API.
_NO_CACHE = {"Cache-Control": "no-cache"}
_SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Everything is same-origin; inline scripts are not used.
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    ),
}


def _resolve(name: str) -> Path | None:
    """A file under STATIC_DIR, or None; `..`, NUL bytes and symlinks out of it are refused."""
    if "\x00" in name or "\\" in name:
        return None
    path = (STATIC_DIR / name).resolve()
    if not path.is_relative_to(STATIC_DIR) or not path.is_file():
        return None
    return path


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={**_NO_CACHE, **_SECURITY})


async def static_file(request: web.Request) -> web.StreamResponse:
    path = await asyncio.to_thread(_resolve, request.match_info["path"])
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={**_NO_CACHE, "X-Content-Type-Options": "nosniff"})


ROUTES: tuple[Route, ...] = (
    Route("GET", "/", index, "webPage",
          "The web page: job list, submit form, live log and metric chart", role=None,
          replies=(Reply(200, "The page (its scripts and styles are under /static/).", None,
                         "text/html"),)),
    Route("GET", "/static/{path:.+}", static_file, "staticFile", "The page's files",
          role=None,
          params=(Param("path", "path", "A file under the page's static folder."),),
          replies=(Reply(200, "The file.", None, "application/octet-stream"),
                   Reply(404, "No such file.", "Error"))),
)  # fmt: skip

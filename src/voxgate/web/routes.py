"""The voice console: ``GET /`` (the page) and ``/console/static/*`` (its CSS, JS, worklets).

Owns only serving files and their headers; login, cookies and key minting live in
:mod:`voxgate.auth.console`, which :func:`add_routes` wires in too. The page itself is plain
HTML/CSS/JS with no build step; ``voxgate-client.js`` is an ES module other pages may import.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from voxgate.auth import console

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/console/static"


def _csp(request: web.Request) -> str:
    # Explicit ws(s) origins: older Safari does not treat 'self' as covering WebSockets.
    ws = f"{'wss' if request.secure else 'ws'}://{request.host}"
    return (
        "default-src 'self'; "
        f"connect-src 'self' {ws}; "
        "media-src 'self' blob:; "
        "img-src 'self' data:; "
        "style-src 'self'; "
        "script-src 'self'; "
        "object-src 'none'; "
        "base-uri 'none'; "
        "frame-ancestors 'none'; "
        "form-action 'self'"
    )


async def index(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC_DIR / "index.html")
    response.headers["Content-Security-Policy"] = _csp(request)
    # The login token is in this page's URL until the script strips it: never leak it.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def add_routes(app: web.Application) -> None:
    """Add the console page, its static files and the console auth API to ``app``."""
    console.add_routes(app)
    app.router.add_get("/", index)
    app.router.add_static(STATIC_PREFIX, STATIC_DIR, append_version=False)

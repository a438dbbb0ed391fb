"""The dashboard: static HTML, CSS and JavaScript modules at /ui, shipped inside the package (no build step).

The pages hold no secrets and need no auth: the browser keeps the API key in sessionStorage and sends it as a
Bearer header on each API call (no cookies, so there is no CSRF surface). What matters here is that the files
come with exact content types, a revalidating cache policy and a strict Content-Security-Policy: nothing
inline, nothing from another origin, so a string from the server that slipped into the page could not run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from ..errors import APIError

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
PREFIX = "/ui"

# Only these suffixes are served; anything else in the folder (or not in it) is a 404.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@lru_cache(maxsize=1)
def assets() -> dict[str, Asset]:
    """Every servable file by its URL path below /ui (read once: the folder is part of the package)."""
    found: dict[str, Asset] = {}
    for path in sorted(UI_DIR.rglob("*")):
        ctype = CONTENT_TYPES.get(path.suffix)
        if ctype is None or not path.is_file():
            continue
        body = path.read_bytes()
        rel = path.relative_to(UI_DIR).as_posix()
        found[rel] = Asset(body, ctype, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return found


def _serve(request: Request, rel: str) -> Response:
    if request.method not in ("GET", "HEAD"):
        # Answered here: the app's 405 handler lists the methods of top-level routes only, not a Mount's.
        raise APIError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}",
            headers={"Allow": "GET, HEAD"},
        )
    asset = assets().get(rel)
    if asset is None:
        return Response(
            "Not found\n",
            status_code=404,
            media_type="text/plain",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
        )
    # No hashed file names (no build step), so browsers revalidate every time: a 304 costs a round trip,
    # and an upgraded service never runs stale scripts against a new API.
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


async def index(request: Request) -> Response:
    return _serve(request, "index.html")


async def static(request: Request) -> Response:
    rel = request.path_params["path"]
    # Path parameters never carry "..": they are matched against the known files, never joined to a folder.
    return _serve(request, rel)


async def to_index(request: Request) -> Response:
    root = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(root + PREFIX + "/", status_code=307)


# Every method reaches _serve, which answers 405 with the right Allow header.
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

# The dashboard is a Mount so that it stays out of the API's OpenAPI document (it is not an API).
routes = [
    Mount(
        PREFIX,
        routes=[
            Route("/", index, methods=ANY_METHOD),
            Route("/{path:path}", static, methods=ANY_METHOD),
        ],
        name="ui",
    ),
]
# `/` itself is otherwise a 404; it leads to the dashboard.
root_routes = [Route("/", to_index, methods=["GET", "HEAD"], include_in_schema=False)]

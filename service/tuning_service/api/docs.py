"""Unauthenticated routes: /health, /openapi.json and the Swagger UI at /docs.

The Swagger UI assets come from the installed `swagger-ui-bundle` package and are served by this service, so
/docs works on a GPU VM without internet access (no CDN).
"""

from __future__ import annotations

import html
import time
from functools import lru_cache
from importlib import metadata

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from .openapi import openapi_document

ASSETS = "/docs/assets"


@lru_cache(maxsize=1)
def service_version() -> str:
    try:
        return metadata.version("tuning")
    except metadata.PackageNotFoundError:
        return "0.0.0"


async def health(request: Request) -> JSONResponse:
    counts = await request.app.state.manager.health()
    return JSONResponse(
        {
            "status": "healthy",
            "version": service_version(),
            "uptime": round(time.monotonic() - request.app.state.started_monotonic, 3),
            **{
                name: int(counts.get(name, 0))
                for name in ("active_jobs", "running_jobs", "queued_jobs", "paused_jobs", "total_jobs")
            },
        }
    )


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document(service_version()))


_DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Tuning service API</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{spec}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout"
    }});
  </script>
</body>
</html>
"""


async def docs(request: Request) -> HTMLResponse:
    # root_path: behind a reverse proxy mounted under a prefix, links must carry the prefix.
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    return HTMLResponse(_DOCS_HTML.format(assets=root + ASSETS, spec=root + "/openapi.json"))


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
    Route("/docs", docs, methods=["GET"], include_in_schema=False),
    Mount(ASSETS, app=StaticFiles(directory=str(swagger_ui_path)), name="swagger-assets"),
]

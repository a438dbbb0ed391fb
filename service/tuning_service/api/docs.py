"""Unauthenticated routes: /health, /openapi.json and the Swagger UI at /docs.

/openapi.json is assembled from the app's own route table (operation.py) and its models (schema/), once per
app. The Swagger UI assets come from the installed `swagger-ui-bundle` package and are served by this
service, so /docs works on a GPU VM without internet access (no CDN).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from ..schema.jobs import Health
from . import params
from .context import jobs
from .operation import Content, Json, document_paths, operation

ASSETS = "/docs/assets"


@lru_cache(maxsize=1)
def service_version() -> str:
    try:
        return metadata.version("tuning")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def openapi_document(routes: Iterable[BaseRoute], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these routes."""
    paths, schemas = document_paths(routes)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tuning service",
            "version": version,
            "description": "Self-hosted LoRA/QLoRA fine-tuning jobs. Authenticate with `Authorization: "
            'Bearer <key>`; errors are `{"error": {"code", "message", "param", "type"}}`, each route listing '
            "the codes it can answer with.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "tunings", "description": "Fine-tuning jobs"},
            {"name": "files", "description": "Uploaded training files"},
            {"name": "usage", "description": "The calling API key's jobs, GPU time and limits"},
            {"name": "openai", "description": "OpenAI-compatible fine-tuning API (docs/openai-compat.md)"},
            {"name": "service"},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key, e.g. test-key-001 in development",
                }
            },
            "schemas": schemas,
        },
    }


@operation(
    "health",
    "Service health (no auth)",
    tag="service",
    security=[],
    ok=Json(Health, "The service is up"),
)
async def health(request: Request) -> JSONResponse:
    params.no_query(request)
    counts = await jobs(request).health()
    return JSONResponse(
        {
            "status": "healthy",
            "version": service_version(),
            "uptime": round(time.monotonic() - request.app.state.started_monotonic, 3),
            **counts,
        }
    )


@operation(
    "openapi",
    "This document",
    tag="service",
    security=[],
    ok=Content({"application/json": None}, "OpenAPI 3.1"),
)
async def openapi_json(request: Request) -> Response:
    # Built once per app (the routes do not change), served as bytes.
    cached: bytes | None = getattr(request.app.state, "openapi_body", None)
    if cached is None:
        cached = bytes(JSONResponse(openapi_document(request.app.routes, service_version())).body)
        request.app.state.openapi_body = cached
    return Response(cached, media_type="application/json")


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


@operation(
    "docs",
    "Swagger UI (works offline)",
    tag="service",
    security=[],
    ok=Content({"text/html": None}, "HTML"),
)
async def docs(request: Request) -> HTMLResponse:
    # root_path: behind a reverse proxy mounted under a prefix, links must carry the prefix.
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    return HTMLResponse(_DOCS_HTML.format(assets=root + ASSETS, spec=root + "/openapi.json"))


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Mount(ASSETS, app=StaticFiles(directory=str(swagger_ui_path)), name="swagger-assets"),
]

"""The ASGI application: `uvicorn tuning_service.app:app`.

Start-up (the lifespan) creates the data folders and database, runs the manager's recovery of unfinished jobs
and only then accepts requests. Shutdown stops the manager's loops but never kills trainers: they run detached
and are re-attached by the next start.

This module (and everything it imports) stays clear of torch/transformers/peft: start-up must take well
under a second, and tests/service/test_main.py checks that no ML module is loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match

from .api import docs as routes_docs
from .api import files as routes_files
from .api import job_actions as routes_job_actions
from .api import jobs as routes_jobs
from .api import logs as routes_logs
from .api import metrics as routes_metrics
from .api import ui as routes_ui
from .api import usage as routes_usage
from .api.auth import setup_keys
from .api.middleware import BodyLimits, RequestMiddleware
from .api.ratelimit import RateLimiter
from .engine.facade import JobManager
from .errors import APIError
from .inference import Inference
from .inference import routes as routes_inference
from .observability import logsink
from .observability.metrics import Snapshots
from .openai import routes as routes_openai
from .settings import Settings

log = logging.getLogger("tuning_service")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings = Settings()
    settings.ensure_dirs()
    logsink.configure(settings.log_level, settings.log_path)
    started = time.monotonic()
    manager = await JobManager.start(settings)
    try:
        app.state.disabled_key_ids = await setup_keys(manager, settings)
    except BaseException:
        await manager.stop()
        raise
    app.state.settings = settings
    app.state.rate_limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
    app.state.manager = manager
    app.state.inference = Inference(settings, manager.store)
    app.state.started_monotonic = started
    # Per-worker HTTP counters shared with sibling workers through <data_dir>/metrics (metrics.py).
    app.state.metrics_snapshots = Snapshots(settings.metrics_dir)
    app.state.metrics_snapshots.start()
    log.info(
        "tuning service ready in %.0f ms: data=%s files_root=%s models=%s max_concurrent_jobs=%d gpus=%s",
        (time.monotonic() - started) * 1000,
        settings.data_dir,
        settings.files_root,
        settings.models_dir,
        settings.max_concurrent_jobs,
        ",".join(settings.gpus) or "none (CPU)",
    )
    try:
        yield
    finally:
        await app.state.metrics_snapshots.stop()
        await app.state.inference.stop()
        await manager.stop()
        log.info(
            "tuning service stopped (running trainers keep running and are re-attached on the next start)"
        )
        logsink.flush()


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    if exc.status_code >= 500:
        log.error(
            "%s %s -> %d %s: %s", request.method, request.url.path, exc.status_code, exc.code, exc.message
        )
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's own errors (unknown route, wrong method) in the same shape as ours.
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err = APIError(404, "not_found", f"No route {request.method} {request.url.path}; see /docs")
    elif exc.status_code == 405:
        err = APIError(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
    else:
        err = APIError(exc.status_code, "http_error", str(exc.detail))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the first matching route's methods; a path served by several routes
        # (GET and POST /v1/files) must list them all.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return JSONResponse(err.body(), status_code=exc.status_code, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def create_app() -> Starlette:
    # Read once here for the body limit; the lifespan reads the rest (data dir etc.) at start-up.
    limit = Settings().max_request_bytes
    return Starlette(
        routes=[
            # Starlette tries routes in order: the ones clients poll hardest first.
            *routes_jobs.routes,
            *routes_docs.routes,
            *routes_logs.routes,
            *routes_job_actions.routes,
            *routes_files.routes,
            *routes_openai.routes,
            *routes_inference.routes,
            *routes_metrics.routes,
            *routes_usage.routes,
            # The dashboard (/ui, and / leading to it): static files, no API.
            *routes_ui.root_routes,
            *routes_ui.routes,
        ],
        # File uploads are bounded by TUNING_MAX_FILE_BYTES (while streaming), everything else by the
        # request limit.
        middleware=[
            Middleware(
                BodyLimits,
                middleware=RequestMiddleware,
                max_body_bytes=limit,
                upload_paths=routes_files.UPLOAD_PATHS,
            )
        ],
        exception_handlers={APIError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )


app = create_app()

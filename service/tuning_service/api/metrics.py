"""GET /metrics: Prometheus text format (observability/metrics.py has the series; docs/service.md "Metrics"
lists them).

Open by default, like most exporters; with TUNING_METRICS_KEY set a scrape needs
`Authorization: Bearer <that key>` (Prometheus: `authorization: {credentials: ...}` in the scrape config).
"""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import APIError
from ..observability.metrics import InferenceCollector, ProcessCollector
from . import params
from .auth import bearer_token
from .context import jobs, settings
from .operation import Content, operation


@operation(
    "metrics",
    "Prometheus metrics (no auth unless TUNING_METRICS_KEY is set)",
    tag="service",
    description="Prometheus text format; every series, its type and labels are listed in docs/service.md "
    "(Metrics). With TUNING_METRICS_KEY set: `Authorization: Bearer <that key>`.",
    security=[{}, {"bearerAuth": []}],
    ok=Content({"text/plain": {"type": "string"}}, "The metrics"),
    errors={401: ("missing_api_key", "invalid_api_key")},
)
async def metrics(request: Request) -> Response:
    params.no_query(request)
    key = settings(request).metrics_key
    if key:
        token = bearer_token(request)
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise APIError(
                401,
                "invalid_api_key",
                "Invalid metrics key: send 'Authorization: Bearer <TUNING_METRICS_KEY>'",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
    # A registry per scrape (a few microseconds): it always reads the current manager's database.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(jobs(request).job_collector())
    registry.register(ProcessCollector(getattr(request.app.state, "metrics_snapshots", None)))
    # The worker's counters, if one runs (a scrape never starts it).
    stats = await request.app.state.inference.worker.call({"op": "stats"})
    registry.register(InferenceCollector(stats))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]

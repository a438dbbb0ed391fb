"""GET /metrics: Prometheus text format (metrics.py has the series; docs/service.md "Metrics" lists them).

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

from ..engine.states import ACTIVE
from ..errors import APIError
from ..observability.metrics import JobCollector, ProcessCollector, Snapshots
from .auth import bearer_token
from .requests import STATUSES, check_query


def build_registry(manager: object, snapshots: Snapshots | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    settings = manager.settings  # type: ignore[attr-defined]
    store = manager.store  # type: ignore[attr-defined]
    registry.register(JobCollector(store, settings, STATUSES, tuple(s.value for s in ACTIVE)))
    registry.register(ProcessCollector(snapshots))
    return registry


async def metrics(request: Request) -> Response:
    check_query(request.query_params)
    state = request.app.state
    key = state.settings.metrics_key
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
    registry = build_registry(state.manager, getattr(state, "metrics_snapshots", None))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]

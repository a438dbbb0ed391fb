"""GET /openapi.json is assembled from the route table (api/operation.py): it describes every route, with
schemas and the bearer scheme, and a route without its piece cannot exist; GET /docs is a Swagger UI whose
assets are all served by the service itself (it works with no internet access)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.routing import Mount, Route

from tests.support.server import ServiceProcess
from tuning_service.api import ui as routes_ui
from tuning_service.api.operation import UndocumentedRoute, document_path, document_paths
from tuning_service.app import app


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_openapi_describes_every_route_of_the_app(api_service: ServiceProcess) -> None:
    r = api_service.get("/openapi.json", key=None)
    assert r.status == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    # The dashboard (routes_ui: /ui and `/` leading to it) is pages, not API: it stays out of the document.
    ui_routes = routes_ui.root_routes
    routes = [route for route in app.routes if isinstance(route, Route) and route not in ui_routes]
    assert len(routes) >= 9
    for route in routes:
        path = document_path(route)
        assert path in doc["paths"], route.path
        documented = set(doc["paths"][path])
        served = {m.lower() for m in (route.methods or set())} - {"head"}
        assert served <= documented, (path, served, documented)
        for op in doc["paths"][path].values():
            assert op["operationId"] and op["summary"] and "200" in op["responses"]
    # The only mounts are the Swagger UI's static assets and the dashboard.
    assert [m.path for m in app.routes if isinstance(m, Mount)] == ["/docs/assets", "/ui"]
    assert "/" not in doc["paths"] and not any(p.startswith("/ui") for p in doc["paths"])


def test_openapi_has_the_bearer_scheme_and_public_routes_opt_out(api_service: ServiceProcess) -> None:
    doc = api_service.get("/openapi.json", key=None).json()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/health"]["get"]["security"] == []
    for path, ops in doc["paths"].items():
        if path.startswith("/v1/"):
            for op in ops.values():
                assert "security" not in op  # inherits the bearer requirement
                assert "401" in op["responses"]


def test_openapi_schemas_are_complete_and_every_ref_resolves(api_service: ServiceProcess) -> None:
    doc = api_service.get("/openapi.json", key=None).json()
    for ref in _refs(doc):
        assert _resolve(doc, ref), ref
    create = doc["paths"]["/v1/tunings.create"]["post"]
    body = _resolve(doc, create["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert set(body["required"]) == {"model", "training_file"}
    assert {"hyperparameters", "method", "suffix", "seed", "metadata", "validation_file"} <= set(
        body["properties"]
    )
    assert {"400", "401", "413", "422"} <= set(create["responses"])
    job = doc["components"]["schemas"]["TuningJob"]
    # Every field the service actually returns is in the schema.
    real = api_service.create_job()
    assert set(real) <= set(job["properties"])
    assert set(doc["components"]["schemas"]["TrainingMetrics"]["properties"]) == {
        "progress", "current_step", "total_steps", "current_epoch", "total_epochs", "train_loss", "eval_loss",
        "train_token_accuracy", "eval_token_accuracy", "learning_rate", "tokens_per_second", "eta_seconds",
        "rewards_margin", "rewards_accuracy", "eval_rewards_margin", "eval_rewards_accuracy",
    }  # fmt: skip
    logs = doc["paths"]["/v1/tunings.logs/{job_id}"]["get"]
    assert "text/event-stream" in logs["responses"]["200"]["content"]
    assert {p["name"] for p in logs["parameters"]} >= {"after", "limit", "follow", "Last-Event-ID"}


def test_docs_is_a_swagger_ui_with_only_local_assets(api_service: ServiceProcess) -> None:
    r = api_service.get("/docs", key=None)
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "SwaggerUIBundle" in html
    assert '"/openapi.json"' in html
    # Offline: nothing is fetched from a CDN.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert any(a.endswith("swagger-ui.css") for a in assets)
    for asset in assets:
        a = api_service.get(asset, key=None)
        assert a.status == 200, asset
        assert len(a.body) > 500, asset
        if asset.endswith(".js"):
            assert "javascript" in a.headers["content-type"]
        if asset.endswith(".css"):
            assert a.headers["content-type"].startswith("text/css")


def test_missing_swagger_asset_is_404(api_service: ServiceProcess) -> None:
    assert api_service.get("/docs/assets/nope.js", key=None).status == 404
    assert api_service.get("/docs/assets/../../../../etc/passwd", key=None).status == 404


def test_an_undocumented_route_cannot_exist() -> None:
    # The walker builds the document from the route table: a route without its @operation stops it.

    async def handler(request: object) -> None:  # pragma: no cover - never called
        return None

    with pytest.raises(UndocumentedRoute, match=r"/v1/new\.thing"):
        document_paths([*app.routes, Route("/v1/new.thing", handler, methods=["GET"])])
    # Routes that are not API (include_in_schema=False) and mounts are left out on purpose.
    paths, _ = document_paths([*app.routes, Route("/hidden", handler, include_in_schema=False)])
    assert "/hidden" not in paths


def test_every_operation_documents_its_query_and_its_errors(api_service: ServiceProcess) -> None:
    doc = api_service.get("/openapi.json", key=None).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            # Every route refuses unknown query parameters: each documents a 400 with invalid_request.
            assert "400" in op["responses"], (path, method)
            if op.get("security") is None:  # the document's default: a bearer key
                assert {"401", "429"} <= set(op["responses"]), (path, method)
    create = doc["paths"]["/v1/tunings.create"]["post"]
    assert {"400", "403", "404", "409", "413", "422"} <= set(create["responses"])
    assert [p["name"] for p in create["parameters"]] == ["Idempotency-Key"]

"""Each route's piece of `/openapi.json`, written next to its handler (`@operation(...)`), and the walker
that assembles the document from the app's route table, as Starlette's SchemaGenerator does: a route
without its piece makes the walker fail, so an undocumented route cannot exist.

Components come from the pydantic models (schema/); nothing here restates a field, a limit or a default.
Error responses list the codes the route can answer with (`code: {enum: [...]}` in the error body), so a
client knows what to switch on and the schemathesis suite checks every answer against the list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Mount, Route

from tuning_trainer.schema import SCHEMA_GENERATOR, json_schema

from ..schema.errors import Error

F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"

# What every authenticated route may also answer (auth.py, ratelimit.py).
AUTH_ERRORS: Mapping[int, tuple[str, ...]] = {
    401: ("missing_api_key", "invalid_api_key"),
    429: ("rate_limited",),
}
# What a route with a body may also answer (middleware.py, the request size limit).
BODY_ERRORS: Mapping[int, tuple[str, ...]] = {413: ("request_too_large",)}
# What any route may answer: a query parameter that is unknown or out of its limits.
QUERY_ERRORS: Mapping[int, tuple[str, ...]] = {400: ("invalid_request",)}
STATUS_TEXT = {
    400: "Malformed request: not JSON, missing fields, wrong types, a bad query parameter",
    401: "Missing or invalid API key",
    403: "Refused by this server's policy",
    404: "No such object (or it belongs to another key)",
    409: "In conflict with the state of an object (a job's status, an idempotency key's first request, "
    "an API key's settings)",
    413: "Request body over the limit",
    422: "Well-formed but invalid: a value outside its limits, a data file's contents (with `line`)",
    429: "Too many requests for this API key (rate_limited: wait `Retry-After` seconds), or over one of its "
    "quotas (quota_exceeded: retrying soon will not help; GET /v1/usage shows the limits)",
}


@dataclass(frozen=True)
class Json:
    """A JSON response (or request body) of `model`."""

    model: type[BaseModel]
    description: str = ""
    links: Mapping[str, Any] | None = None
    also: tuple[type[BaseModel], ...] = ()
    """Other objects the response may be instead (told apart by their `object` constant)"""


@dataclass(frozen=True)
class Content:
    """A response of other media types: {media type: JSON Schema, or a model}."""

    media: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Header:
    name: str
    type: Any
    description: str | None = None


@dataclass(frozen=True)
class Operation:
    operation_id: str
    summary: str
    tag: str
    ok: Json | Content
    errors: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    description: str | None = None
    query: type[BaseModel] | None = None
    body: Json | Content | None = None
    headers: tuple[Header, ...] = ()
    path: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # None: the document's default (bearer key); [] for public routes; or a list of requirements.
    security: list[dict[str, list[str]]] | None = None


def operation(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    ok: Json | Content,
    errors: Mapping[int, tuple[str, ...]] | None = None,
    description: str | None = None,
    query: type[BaseModel] | None = None,
    body: Json | Content | None = None,
    headers: tuple[Header, ...] = (),
    path: Mapping[str, Mapping[str, Any]] | None = None,
    security: list[dict[str, list[str]]] | None = None,
) -> Callable[[F], F]:
    """Attach the route's piece of the document to its handler."""
    op = Operation(
        operation_id,
        summary,
        tag,
        ok,
        errors=dict(errors or {}),
        description=description,
        query=query,
        body=body,
        headers=headers,
        path=dict(path or {}),
        security=security,
    )

    def attach(handler: F) -> F:
        handler.__openapi__ = op  # type: ignore[attr-defined]
        return handler

    return attach


class UndocumentedRoute(Exception):
    pass


def links(param: str, **operations: str) -> dict[str, Any]:
    """OpenAPI links from a created object's id to the operations that take it (clients and schemathesis's
    stateful tests follow them)."""
    return {
        name: {"operationId": op, "parameters": {param: "$response.body#/id"}}
        for name, op in operations.items()
    }


# ---- the walker ------------------------------------------------------------------------------------------


class _Models:
    """The models the document refers to; their schemas become the components."""

    def __init__(self) -> None:
        self.models: dict[str, type[BaseModel]] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        self.models[model.__name__] = model
        return {"$ref": REF.format(model=model.__name__)}

    def components(self) -> dict[str, Any]:
        _, top = models_json_schema(
            [(m, "validation") for m in self.models.values()],
            ref_template=REF,
            schema_generator=SCHEMA_GENERATOR,
        )
        return dict(sorted(top.get("$defs", {}).items()))


def _schema_of(value: Any, models: _Models) -> Any:
    if isinstance(value, type) and issubclass(value, BaseModel):
        return models.ref(value)
    return value


def _content(spec: Json | Content, models: _Models) -> dict[str, Any]:
    if isinstance(spec, Json) and spec.also:
        return {"application/json": {"schema": {"oneOf": [models.ref(m) for m in (spec.model, *spec.also)]}}}
    if isinstance(spec, Json):
        return {"application/json": {"schema": models.ref(spec.model)}}
    return {
        media: ({"schema": _schema_of(s, models)} if s is not None else {}) for media, s in spec.media.items()
    }


def _strip_null(prop: Mapping[str, Any]) -> dict[str, Any]:
    # A query parameter or header is absent or a string: "null" is not something it can be.
    out = dict(prop)
    branches = [b for b in out.get("anyOf", ()) if b.get("type") != "null"]
    if "anyOf" in out and len(branches) == 1:
        out.pop("anyOf")
        out.update(branches[0])
    elif "anyOf" in out:
        out["anyOf"] = branches
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """A parameter's schema with its references (an enum's) written out: parameters carry no $defs."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = json_schema(model)
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = _strip_null(_inline(prop, schema.get("$defs", {})))
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            param["description"] = prop.pop("description")
        style = prop.pop("x-style", None)
        if style is not None:  # e.g. metadata[KEY]=VALUE
            param.update(style=style, explode=True)
        param["schema"] = prop
        out.append(param)
    return out


def _header_parameter(header: Header) -> dict[str, Any]:
    schema = _strip_null(TypeAdapter(header.type).json_schema(schema_generator=SCHEMA_GENERATOR))
    param: dict[str, Any] = {"name": header.name, "in": "header", "required": False}
    description = header.description or schema.pop("description", None)
    if description:
        param["description"] = description
    schema.pop("description", None)
    param["schema"] = schema
    return param


def _error_response(status: int, codes: Iterable[str], models: _Models) -> dict[str, Any]:
    codes = sorted(set(codes))
    out: dict[str, Any] = {
        "description": f"{STATUS_TEXT.get(status, 'Error')}. Codes: {', '.join(codes)}",
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        models.ref(Error),
                        {"properties": {"error": {"properties": {"code": {"enum": codes}}}}},
                    ]
                }
            }
        },
    }
    if status == 429:
        out["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}}
        }
    return out


def _fragment(op: Operation, route: Route, models: _Models) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    if op.security is not None:
        out["security"] = op.security
    params: list[dict[str, Any]] = []
    for name in route.param_convertors:
        schema = dict(op.path.get(name, {"type": "string"}))
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        params += _query_parameters(op.query)
    params += [_header_parameter(h) for h in op.headers]
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": _content(op.body, models)}
    ok: dict[str, Any] = {"description": op.ok.description or "OK", "content": _content(op.ok, models)}
    if isinstance(op.ok, Json) and op.ok.links:
        ok["links"] = dict(op.ok.links)
    errors: dict[int, set[str]] = {}
    # Every route refuses unknown query parameters; authenticated ones (the document's default security)
    # also answer 401 and 429; one with a body, 413.
    extra = [op.errors, QUERY_ERRORS]
    if op.security is None:
        extra.append(AUTH_ERRORS)
    if op.body is not None:
        extra.append(BODY_ERRORS)
    for table in extra:
        for status, codes in table.items():
            errors.setdefault(status, set()).update(codes)
    out["responses"] = {
        "200": ok,
        **{str(s): _error_response(s, codes, models) for s, codes in sorted(errors.items())},
    }
    return out


def document_path(route: Route) -> str:
    """The route's path as the document names it: `{model:path}` (Starlette's convertor) is `{model}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)


def document_paths(routes: Iterable[BaseRoute]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) of the routes' operations. Mounts (static files, the dashboard) and
    routes with include_in_schema=False are not API; every other route must carry its operation."""
    models = _Models()
    paths: dict[str, Any] = {}
    for route in routes:
        if isinstance(route, Mount) or not isinstance(route, Route) or not route.include_in_schema:
            continue
        op = getattr(route.endpoint, "__openapi__", None)
        if not isinstance(op, Operation):
            raise UndocumentedRoute(f"{route.path} ({route.endpoint.__name__}) has no @operation")
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(document_path(route), {})[method.lower()] = _fragment(op, route, models)
    return paths, models.components()

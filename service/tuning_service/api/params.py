"""Reading a request: its JSON body, query string, headers and path ids, each validated once against its
schema (schema/), every problem reported through the one table (errors.PROBLEMS)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request

from tuning_trainer.schema import first_problem, json_schema

from ..errors import BODY, HEADER, QUERY, APIError, job_not_found, problem_error
from ..schema.base import QueryModel
from ..schema.jobs import IdempotencyKey, LastEventId

M = TypeVar("M", bound=BaseModel)
Q = TypeVar("Q", bound=QueryModel)

# A job id that cannot exist gets the same 404 as an unknown one (nothing to learn from a different error).
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return json_schema(model)


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise APIError(400, "invalid_json", "Request body is empty: send a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise APIError(400, "invalid_json", "Request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise APIError(
            400,
            "invalid_json",
            f"Request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        ) from None


def body(raw: bytes, model: type[M]) -> M:
    """The request body as `model`, or the APIError of its first problem."""
    data = parse_json(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise problem_error(first_problem(exc, _schema(model)), BODY) from None


async def read_body(request: Request, model: type[M]) -> M:
    return body(await request.body(), model)


def query(request: Request, model: type[Q]) -> Q:
    """The query string as `model`; unknown parameters are refused like unknown body fields (a typo,
    `?stauts=failed`, must not silently return something else)."""
    return query_values(request.query_params, model)


def query_values(values: Mapping[str, Any], model: type[Q]) -> Q:
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        problem = first_problem(exc, _schema(model), noun="query parameter")
        raise problem_error(problem, QUERY) from None


def no_query(request: Request) -> None:
    """Refuse any query parameter (for routes that take none)."""
    if request.scope.get("query_string"):
        from ..schema.jobs import NoQuery

        query(request, NoQuery)


_IDEMPOTENCY_KEY: TypeAdapter[str] = TypeAdapter(IdempotencyKey)
_LAST_EVENT_ID: TypeAdapter[int] = TypeAdapter(LastEventId)


def _header(request: Request, name: str, adapter: TypeAdapter[Any]) -> Any:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        return adapter.validate_python(raw.strip() if adapter is _LAST_EVENT_ID else raw, strict=False)
    except ValidationError as exc:
        problem = first_problem(exc, adapter.json_schema(), prefix=name)
        raise problem_error(problem, HEADER) from None


def idempotency_key(request: Request) -> str | None:
    return _header(request, "Idempotency-Key", _IDEMPOTENCY_KEY)  # type: ignore[no-any-return]


def last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return None
    return _header(request, "Last-Event-ID", _LAST_EVENT_ID)  # type: ignore[no-any-return]


def job_id(request: Request) -> str:
    value = str(request.path_params["job_id"])
    if not _JOB_ID_RE.match(value):
        raise job_not_found(value[:128])
    return value

"""Helpers shared by the resources."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

if TYPE_CHECKING:
    from .._http import Transport
    from .._streaming import Stream

T = TypeVar("T")


def _path_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"Expected a non-empty job id, got {job_id!r}")
    return quote(job_id, safe="")


def _dispose(resp: Any) -> None:
    """Give a streamed response's connection back. One not read to its end is closed first: returned to
    the pool with unread bytes, it would corrupt the next request sent over it."""
    try:
        if not resp.closed and resp.length_remaining != 0:
            resp.close()
    finally:
        resp.release_conn()


def _not_none(values: dict[str, Any]) -> dict[str, Any]:
    """A request body of the parameters that were given (None: left to the service's default)."""
    return {k: v for k, v in values.items() if v is not None}


def _open_stream(
    transport: Transport,
    path: str,
    body: dict[str, Any],
    parse: Callable[[Mapping[str, Any]], T],
    *,
    timeout: float | None = None,
) -> Stream[T]:
    """POST `body` for an event stream and return its `Stream`. The POST is retried as any POST is (same
    Idempotency-Key, 408/429/5xx and connection errors, Retry-After honoured) until a 2xx arrives; from
    then on nothing is retried."""
    from .._errors import TuningError
    from .._streaming import Stream

    resp = transport.request("POST", path, json_body=body, stream=True, timeout=timeout)
    ctype = resp.headers.get("Content-Type", "")
    if "text/event-stream" not in ctype:
        _dispose(resp)
        raise TuningError(f"POST {path} with stream: true answered {ctype or 'no content type'}, not events")
    return Stream(resp, parse)

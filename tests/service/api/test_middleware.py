"""The request middleware in isolation (service/tuning_service/middleware.py): an unexpected exception becomes
a 500 `internal_error` that names the request id and leaks nothing; the body limit applies to streamed bodies.

A real server cannot be made to crash on purpose, so these drive the ASGI middleware directly (narrow unit
tests); everything else about requests is tested over real HTTP in test_api_*.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from tuning_service.api.middleware import RequestMiddleware


def _run(
    app: Any, *, body_chunks: list[bytes] | None = None, headers: list[tuple[bytes, bytes]] | None = None
):
    sent: list[dict[str, Any]] = []
    chunks = list(body_chunks or [b""])

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/tunings.create",
        "headers": headers or [],
        "query_string": b"",
    }
    asyncio.run(RequestMiddleware(app, max_body_bytes=100)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_an_unexpected_exception_is_a_500_that_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("secret detail /srv/internal/path")

    with caplog.at_level(logging.ERROR, logger="tuning_service.http"):
        status, headers, body = _run(broken, headers=[(b"x-request-id", b"req-500")])
    assert status == 500
    err = json.loads(body)["error"]
    assert err["code"] == "internal_error"
    assert err["type"] == "api_error"
    assert "req-500" in err["message"]
    assert "secret" not in body.decode() and "/srv" not in body.decode()
    assert headers[b"x-request-id"] == b"req-500"
    # The details are in the service log, under the request id.
    assert any("req-500" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_streamed_body_over_the_limit_is_refused_while_reading() -> None:
    from tuning_service.errors import APIError

    async def reads_body(scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        try:
            await request.body()
        except APIError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status_code)
        else:
            response = JSONResponse({"ok": True})
        await response(scope, receive, send)

    status, _, body = _run(reads_body, body_chunks=[b"x" * 60, b"x" * 60])
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"
    status, _, body = _run(reads_body, body_chunks=[b"x" * 50, b"x" * 50])
    assert status == 200


def test_a_malformed_content_length_is_400() -> None:
    async def never(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be reached")

    status, _, body = _run(never, headers=[(b"content-length", b"12abc")])
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_request"

"""One pure-ASGI middleware for what every request needs: a request id, a body size limit, an access log line,
and a last-resort 500 that never leaks internals. `BodyLimits` gives upload routes the file limit instead of
the request limit.

Pure ASGI (not BaseHTTPMiddleware) so that streaming responses pass straight through and client disconnects
still reach the SSE stream.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import APIError
from ..observability import logsink, metrics

log = logging.getLogger("tuning_service.http")

# A client's id is echoed only if it is short and plain: it ends up in headers and log lines.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


# Request ids only need to be unique (they tie a response to its log lines), not unpredictable: a generator
# seeded once per process from os.urandom saves a getrandom() system call per request.
_ids = random.Random()


def _new_request_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


def _error_response_messages(err: APIError, request_id: str) -> tuple[Message, Message]:
    body = json.dumps(err.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    return (
        {"type": "http.response.start", "status": err.status_code, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        "request_too_large",
        f"Request body is over the limit of {limit} bytes (TUNING_MAX_REQUEST_BYTES)",
        headers={"Connection": "close"},
    )


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Only two headers matter here: pick them out rather than decoding every header of every request
        # (ASGI servers give lower-case names).
        given = length = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
            elif name == b"content-length":
                length = value.decode("latin-1")
        request_id = given if given is not None and _REQUEST_ID_RE.match(given) else _new_request_id()
        request_id_header = (b"x-request-id", request_id.encode("latin-1"))
        scope.setdefault("state", {})["request_id"] = request_id
        started_at = time.monotonic()
        state: dict[str, Any] = {"status": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["stream"] = metrics.stream_started(message)  # open SSE streams gauge
                # A new list: the response's own header list is left as it was.
                message["headers"] = [
                    *(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                    request_id_header,
                ]
            await send(message)

        async def send_error(err: APIError) -> None:
            start, body = _error_response_messages(err, request_id)
            state["status"] = err.status_code
            await send(start)
            await send(body)

        try:
            # Refuse an announced oversize body before reading a byte of it.
            if length is not None:
                if not length.isdigit():
                    await send_error(APIError(400, "invalid_request", "Content-Length must be a number"))
                    return
                if int(length) > self.max_body_bytes:
                    await send_error(too_large(self.max_body_bytes))
                    return
            received = 0

            async def counted_receive() -> Message:
                # Chunked bodies announce no length: count as they arrive and stop at the limit.
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise too_large(self.max_body_bytes)
                return message

            await self.app(scope, counted_receive, send_with_id)
        except Exception:
            log.exception(
                "unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), request_id
            )
            if state["status"] is not None:
                raise  # the response already started: nothing sensible can be sent any more
            await send_error(
                APIError(
                    500,
                    "internal_error",
                    f"The server hit an internal error; it is logged with request id {request_id}",
                )
            )
        finally:
            elapsed = time.monotonic() - started_at
            # Prometheus counters by route template (~1 us: plain dicts, see metrics.py).
            metrics.record_request(scope, state["status"], elapsed, state.get("stream", False))
            if scope.get("path") != "/health" and logsink.access_log.isEnabledFor(logging.INFO):
                logsink.access(
                    f"{scope.get('method')} {scope.get('path')} {state['status']} {elapsed * 1000:.1f}ms"
                    f" rid={request_id}"
                )


class BodyLimits:
    """Wraps the request middleware: upload routes get the file limit (checked while streaming, by
    `Files.upload`), every other route the request limit."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        middleware: Callable[..., Any],
        max_body_bytes: int,
        upload_paths: tuple[str, ...],
    ) -> None:
        self.default = middleware(app, max_body_bytes=max_body_bytes)
        self.uploads = middleware(app, max_body_bytes=2**62)
        self.upload_paths = frozenset(upload_paths)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        upload = (
            scope["type"] == "http" and scope.get("method") == "POST" and scope["path"] in self.upload_paths
        )
        await (self.uploads if upload else self.default)(scope, receive, send)

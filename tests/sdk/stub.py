"""A small scriptable HTTP server for the SDK's transport tests (http.server on 127.0.0.1, in a thread).

Each route holds a list of actions; a request takes the next one (the last repeats). An action gets the
handler and may answer, misbehave (drop the connection) or stream. Every request is recorded.

Every JSON body the stub answers with is checked against the service's model of that route (objects.py): a
fixture the service could not have sent is listed in `contract_problems`, and the `stub` fixture fails the
test with them. A body that is off the contract on purpose is sent with ``conform=False``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.sdk.objects import conformance_problem, job_body

__all__ = ["Handler", "Recorded", "StubServer", "delay", "drop", "error", "job_body", "reply"]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


Action = Callable[["Handler", Recorded], None]


def reply(
    status: int = 200, body: Any = None, headers: dict[str, str] | None = None, *, conform: bool = True
) -> Action:
    def action(h: Handler, req: Recorded) -> None:
        h.send_json(status, body, headers, conform=conform)

    return action


def error(status: int, code: str, message: str = "boom", param: str | None = None, **extra: Any) -> Action:
    body = {"error": {"code": code, "message": message, "param": param, "type": "x", **extra}}
    return reply(status, body, {"X-Request-ID": f"req-{code}"})


def drop() -> Action:
    """Read the request, then close the socket without a byte of answer."""

    def action(h: Handler, req: Recorded) -> None:
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)

    return action


def delay(seconds: float, then: Action) -> Action:
    def action(h: Handler, req: Recorded) -> None:
        time.sleep(seconds)
        then(h, req)

    return action


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StubServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _handle(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Recorded(self.command, split.path, parse_qs(split.query), dict(self.headers.items()), body)
        self.server.record(req)
        self.server.action_for(self.command, split.path)(self, req)

    do_GET = do_POST = do_DELETE = _handle

    def send_json(
        self, status: int, body: Any, headers: dict[str, str] | None = None, *, conform: bool = True
    ) -> None:
        if conform:
            problem = conformance_problem(self.command, urlsplit(self.path).path, status, body)
            if problem is not None:
                # Sent all the same: the test goes on, and the `stub` fixture fails it at the end (an
                # exception here would only reach the client as a dropped connection).
                self.server.contract_problems.append(problem)
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    # ---- chunked event streams --------------------------------------------------------------------------

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def abort(self) -> None:
        """Drop the connection mid-body (no terminating chunk)."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


class StubServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        self.routes: dict[tuple[str, str], list[Action]] = {}
        self.requests: list[Recorded] = []
        self.contract_problems: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def route(self, method: str, path: str, *actions: Action) -> None:
        """Script `path` (exact, or a prefix ending in '/'): each request takes the next action."""
        self.routes[(method, path)] = list(actions)

    def record(self, req: Recorded) -> None:
        with self._lock:
            self.requests.append(req)

    def action_for(self, method: str, path: str) -> Action:
        with self._lock:
            actions = self.routes.get((method, path))
            if actions is None:
                for (m, p), acts in self.routes.items():
                    if m == method and p.endswith("/") and path.startswith(p):
                        actions = acts
                        break
            if not actions:
                return error(404, "no_route", f"stub has no route for {method} {path}")
            return actions.pop(0) if len(actions) > 1 else actions[0]

    def calls(self, method: str, path_prefix: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    def start(self) -> StubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

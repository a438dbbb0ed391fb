"""The inference worker: `python -m tuning_trainer.serve --socket PATH`.

It listens on a Unix socket before importing anything heavy (the service connects as soon as the socket
exists; requests queue while torch loads), serves one request per connection on a thread of its own, and
exits once the engine has been idle (nothing loaded, nothing asked) for its idle time. A connection that
closes cancels its request: a reader thread watches for the end of the stream while events are written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import socketserver
import sys
import threading
import time
from typing import Any

from .protocol import Generation, RequestError, line

log = logging.getLogger("tuning_trainer.serve")

MAX_REQUEST_BYTES = 16 * 1024 * 1024
CANCELLED = "cancelled"  # put on a request's event queue by its watcher, never sent


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    engine: Any


class _Connection(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        raw = self.rfile.readline(MAX_REQUEST_BYTES)
        if not raw:
            return
        try:
            req = json.loads(raw)
            op = req.get("op")
        except (ValueError, AttributeError):
            self._write(RequestError(400, "invalid_request", "not a JSON object").event())
            return
        engine = self.server.engine
        if op == "stats":
            self._write({"type": "stats", "pid": os.getpid(), **engine.snapshot()})
        elif op == "evict":
            self._write({"type": "evicted", "found": engine.evict(str(req.get("adapter")))})
        elif op == "generate":
            self._generate(req)
        else:
            self._write(RequestError(400, "invalid_request", f"unknown op {op!r}").event())

    def _generate(self, req: dict[str, Any]) -> None:
        events: queue.Queue[dict[str, Any]] = queue.Queue()
        try:
            gen = Generation.from_request(req, events.put)
        except (KeyError, TypeError, ValueError) as exc:
            self._write(RequestError(400, "invalid_request", f"bad generate request: {exc}").event())
            return
        threading.Thread(target=self._watch, args=(gen, events), daemon=True).start()
        self.server.engine.submit(gen)
        while True:
            event = events.get()
            if event["type"] == CANCELLED or not self._write(event):
                gen.cancelled.set()
                return
            if event["type"] in ("done", "error"):
                return

    def _watch(self, gen: Generation, events: queue.Queue[dict[str, Any]]) -> None:
        """The peer closing its end (a client that hung up) cancels the generation, and ends the wait for
        its events (a cancelled generation sends none)."""
        try:
            while self.connection.recv(4096):
                pass
        except OSError:
            pass
        gen.cancelled.set()
        events.put({"type": CANCELLED})

    def _write(self, event: dict[str, Any]) -> bool:
        try:
            self.connection.sendall(line(event))
            return True
        except OSError:
            return False


def serve(path: str, engine: Any, poll_seconds: float = 1.0) -> None:
    # Bound and listening under a name of its own first, then renamed into place: a client that sees the path
    # can connect (between bind and listen it would be refused). The rename replaces a stale socket of a
    # worker that died (the service starts us under its lock).
    fresh = path + ".new"
    if os.path.exists(fresh):
        os.unlink(fresh)
    server = _Server(fresh, _Connection, bind_and_activate=True)
    server.engine = engine
    os.chmod(fresh, 0o600)
    os.replace(fresh, path)
    ours = os.stat(path).st_ino
    stop = threading.Event()

    def idle_watch() -> None:
        while not stop.wait(poll_seconds):
            if engine.idle():
                log.info("idle for %.0f s with nothing loaded: exiting", engine.idle_seconds)
                server.shutdown()
                return

    threading.Thread(target=idle_watch, daemon=True).start()
    if threading.current_thread() is threading.main_thread():  # (tests serve from another thread)
        stop_server = threading.Thread(target=server.shutdown, daemon=True)

        def on_sigterm(*_: Any) -> None:
            if stop_server.ident is None:  # a second SIGTERM finds it started
                stop_server.start()

        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        try:
            if os.stat(path).st_ino == ours:  # not a newer worker's socket at the same path
                os.unlink(path)
        except OSError:
            pass
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning_trainer.serve")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--engine", default="transformers", choices=("transformers", "vllm"))
    parser.add_argument("--max-adapters", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    started = time.monotonic()
    if args.engine == "vllm":
        from .vllm_engine import VLLMEngine

        engine: Any = VLLMEngine(max_adapters=args.max_adapters, idle_seconds=args.idle_seconds)
    else:
        from .engine import TransformersEngine

        engine = TransformersEngine(max_adapters=args.max_adapters, idle_seconds=args.idle_seconds)
    log.info("inference worker %d (%s engine) listening on %s", os.getpid(), engine.name, args.socket)
    serve(args.socket, engine)
    log.info("inference worker %d stopped after %.0f s", os.getpid(), time.monotonic() - started)
    return 0

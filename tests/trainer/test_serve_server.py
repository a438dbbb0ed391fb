"""The inference worker's socket server (serve/server.py) with a stand-in engine: one request per
connection; a client that hangs up cancels its generation and frees its connection thread even though a
cancelled generation sends nothing more; the socket file goes with the server."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from tuning_trainer.serve.protocol import Generation
from tuning_trainer.serve.server import serve

REQUEST = {"op": "generate", "base": {"location": "m"}, "adapter": None, "kind": "chat",
           "messages": [], "sampling": {}}  # fmt: skip


class StallingEngine:
    """Emits `start`, then waits for the cancel and returns without another event (as engines do)."""

    name = "stub"
    idle_seconds = 3600.0

    def __init__(self) -> None:
        self.cancelled: list[Generation] = []

    def submit(self, gen: Generation) -> None:
        def work() -> None:
            gen.emit({"type": "start", "prompt_tokens": 1})
            if gen.cancelled.wait(10):
                self.cancelled.append(gen)

        threading.Thread(target=work, daemon=True).start()

    def snapshot(self) -> dict[str, Any]:
        return {"engine": self.name}

    def evict(self, name: str) -> bool:
        return False

    def idle(self) -> bool:
        return False


def _connection_threads() -> int:
    return sum("process_request" in t.name for t in threading.enumerate())


def test_hang_ups_cancel_and_free_their_connection_threads(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sock")
    engine = StallingEngine()
    threading.Thread(target=serve, args=(path, engine, 0.05), daemon=True).start()
    while not Path(path).exists():
        time.sleep(0.01)
    for _ in range(5):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(json.dumps(REQUEST).encode() + b"\n")
            assert json.loads(s.makefile("rb").readline())["type"] == "start"
    deadline = time.monotonic() + 5
    while (_connection_threads() or len(engine.cancelled) < 5) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(engine.cancelled) == 5
    assert _connection_threads() == 0
    with socket.socket(socket.AF_UNIX) as s:  # still serving
        s.connect(path)
        s.sendall(b'{"op": "stats"}\n')
        assert json.loads(s.makefile("rb").readline())["engine"] == "stub"

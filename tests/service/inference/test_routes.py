"""The inference routes over a fake worker (tests/service/inference/fake_worker.py), through a real uvicorn
server in this process: a worker that dies mid-stream ends the stream with an in-band error event and no
`[DONE]`; one that dies during a whole answer is a 503; the next request starts a new worker."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.support.server import DEV_KEY
from tuning_service.inference import worker as worker_mod

FAKE = Path(__file__).with_name("fake_worker.py")
BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(worker_mod, "COMMAND", (sys.executable, str(FAKE)))
    monkeypatch.setenv("FAKE_WORKER_MODE", "ok")
    (tmp_path / "models" / "fake").mkdir(parents=True)
    (tmp_path / "models" / "fake" / "config.json").write_text("{}")
    for name, value in {"DATA_DIR": tmp_path / "data", "MODELS_DIR": tmp_path / "models",
                        "FILES_ROOT": tmp_path, "API_KEYS": ""}.items():  # fmt: skip
        monkeypatch.setenv(f"TUNING_{name}", str(value))
    from tuning_service.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(15)


def post(port: int, body: dict[str, Any]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"})  # fmt: skip
    return conn.getresponse()


def sse(resp: http.client.HTTPResponse) -> list[Any]:
    events = [line[6:] for line in resp.read().decode().split("\n\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def test_a_streamed_answer_and_a_whole_one(server: int) -> None:
    events = sse(post(server, {**BODY, "stream": True}))
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "hello"
    whole = post(server, BODY)
    assert whole.status == 200 and json.loads(whole.read())["choices"][0]["message"]["content"] == "hello"


def test_a_worker_dying_mid_stream_ends_it_with_an_error_event(server: int, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_WORKER_MODE", "crash")
    resp = post(server, {**BODY, "stream": True})
    assert resp.status == 200  # the first event came before the worker died
    events = sse(resp)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "engine_crashed"
    assert any(e.get("choices") and e["choices"][0]["delta"].get("content") == "hel" for e in events[:-1])
    whole = post(server, BODY)
    assert (whole.status, json.loads(whole.read())["error"]["code"]) == (503, "engine_crashed")
    monkeypatch.setenv("FAKE_WORKER_MODE", "ok")
    assert post(server, BODY).status == 200

"""The inference worker's protocol: JSON lines over a Unix socket, one connection per request.

The service writes one request line and reads event lines until `done` or `error`. Closing the connection
is the cancel: the worker stops that generation at its next token. Pure Python (the service's tests and the
worker share it; the service itself only speaks the lines).

Requests (`op`):
- `generate`: {"base": {"location", "quantize"}, "adapter": {"name", "path"} | null, "kind": "chat" |
  "completion", "messages" | "prompts", "max_tokens": int | null, "echo": bool, "logprobs": int | null,
  "sampling": {"temperature", "top_p", "stop", "seed", "n", "presence_penalty", "frequency_penalty"}}
- `stats`: the engine's counters; `evict`: {"adapter": name} drops a deleted fine-tune's adapter.

Events (`type`): `start` {"prompt_tokens", "queued_seconds", "load_seconds", "switched"}; `echo` {"index",
"text", "logprobs"}; `delta` {"index", "text", "logprobs"}; `finish` {"index", "reason",
"completion_tokens"}; `done` {"usage"}; `error` {"status", "code", "message", "param"}.
A logprobs entry is {"token", "logprob", "top": [[token, logprob], ...]} (logprob null for a prompt's
first token).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class BaseSpec:
    location: str
    """A model directory or a hub id"""
    quantize: bool = False
    """Load in 4-bit (NF4, as QLoRA trained it)"""


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: str


@dataclass
class Generation:
    """One request, as the engine runs it."""

    base: BaseSpec
    adapter: AdapterSpec | None
    kind: str
    messages: list[dict[str, str]] | None
    prompts: list[str] | None
    max_tokens: int | None
    echo: bool
    logprobs: int | None
    sampling: dict[str, Any]
    emit: Emit
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = 0.0

    @classmethod
    def from_request(cls, req: dict[str, Any], emit: Emit) -> Generation:
        base = req["base"]
        adapter = req.get("adapter")
        return cls(
            base=BaseSpec(str(base["location"]), bool(base.get("quantize"))),
            adapter=None if not adapter else AdapterSpec(str(adapter["name"]), str(adapter["path"])),
            kind=str(req["kind"]),
            messages=req.get("messages"),
            prompts=req.get("prompts"),
            max_tokens=req.get("max_tokens"),
            echo=bool(req.get("echo")),
            logprobs=req.get("logprobs"),
            sampling=dict(req.get("sampling") or {}),
            emit=emit,
        )


class RequestError(Exception):
    """A request this engine cannot serve, reported as an `error` event (and an HTTP status)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def event(self) -> dict[str, Any]:
        return {
            "type": "error",
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "param": self.param,
        }


def line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8")

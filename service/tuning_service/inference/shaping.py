"""The worker's events as OpenAI's objects: a whole `chat.completion` / `text_completion`, or the chunks of
a streamed one. Pure functions over the event dicts (tuning_trainer/serve/protocol.py lists them)."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

FINGERPRINT = "fp_tuning"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "token": e["token"],
            "logprob": e["logprob"],
            "bytes": _bytes(e["token"]),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": _bytes(t)} for t, lp in e["top"]],
        }
        for e in entries
    ]


@dataclass
class _Choice:
    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Collected:
    """A generation's events gathered up (the non-streamed answer)."""

    choices: dict[int, _Choice] = field(default_factory=dict)
    usage: dict[str, int] | None = None

    def add(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in ("delta", "echo"):
            c = self.choices.setdefault(event["index"], _Choice())
            c.text += event["text"]
            c.logprobs += event.get("logprobs") or []
        elif kind == "finish":
            self.choices.setdefault(event["index"], _Choice()).finish_reason = event["reason"]
        elif kind == "done":
            self.usage = usage(event["usage"])


def usage(u: dict[str, int]) -> dict[str, int]:
    return {
        "prompt_tokens": u["prompt_tokens"],
        "completion_tokens": u["completion_tokens"],
        "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
    }


def chat_completion(cid: str, model: str, got: Collected, want_logprobs: bool) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text, "refusal": None},
                "finish_reason": c.finish_reason or "length",
                "logprobs": {"content": chat_logprobs(c.logprobs), "refusal": None}
                if want_logprobs
                else None,
            }
            for i, c in sorted(got.choices.items())
        ],
        "usage": got.usage,
        "system_fingerprint": FINGERPRINT,
    }


def completion_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for e in entries:
        tokens.append(e["token"])
        token_logprobs.append(e["logprob"])
        tops.append(None if e["logprob"] is None else {t: lp for t, lp in e["top"]})
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def completion(
    cid: str, model: str, got: Collected, want_logprobs: bool, prompts: list[str], n: int, echo: bool
) -> dict[str, Any]:
    choices = []
    for i, c in sorted(got.choices.items()):
        start = 0 if echo else len(prompts[i // n])
        choices.append(
            {
                "index": i,
                "text": c.text,
                "finish_reason": c.finish_reason or "length",
                "logprobs": completion_logprobs(c.logprobs, start) if want_logprobs else None,
            }
        )
    return {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": got.usage,
        "system_fingerprint": FINGERPRINT,
    }


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    """The chunks of a streamed answer, one per worker event."""

    def __init__(
        self,
        kind: str,
        model: str,
        want_logprobs: bool,
        include_usage: bool,
        prompts: list[str],
        n: int,
        echo: bool,
    ) -> None:
        self.kind = kind
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = int(time.time())
        self.model = model
        self.want_logprobs = want_logprobs
        self.include_usage = include_usage
        self.prompts, self.n, self.echo = prompts, n, echo
        self.offsets: dict[int, int] = {}
        self.started: set[int] = set()

    def _chunk(self, choices: list[dict[str, Any]], usage_: dict[str, int] | None = None) -> bytes:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return sse(
            {
                "id": self.id,
                "object": obj,
                "created": self.created,
                "model": self.model,
                "choices": choices,
                "usage": usage_,
                "system_fingerprint": FINGERPRINT,
            }
        )

    def event(self, event: dict[str, Any]) -> bytes:
        kind = event["type"]
        if kind in ("delta", "echo"):
            return self._text(event["index"], event["text"], event.get("logprobs") or [], None)
        if kind == "finish":
            return self._text(event["index"], "", [], event["reason"])
        if kind == "done" and self.include_usage:
            return self._chunk([], usage(event["usage"]))
        return b""

    def _text(self, index: int, text: str, entries: list[dict[str, Any]], finish: str | None) -> bytes:
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": text} if text or finish is None else {}
            out = b""
            if index not in self.started:  # the first chunk of a choice names the role, as OpenAI's do
                self.started.add(index)
                out = self._chunk(
                    [
                        {
                            "index": index,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                            "logprobs": None,
                        }
                    ]
                )
            logprobs = (
                {"content": chat_logprobs(entries), "refusal": None}
                if self.want_logprobs and entries
                else None
            )
            return out + self._chunk(
                [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]
            )
        start = self.offsets.get(index, 0 if self.echo else len(self.prompts[index // self.n]))
        logprobs = completion_logprobs(entries, start) if self.want_logprobs and entries else None
        self.offsets[index] = start + sum(len(e["token"]) for e in entries)
        return self._chunk([{"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}])

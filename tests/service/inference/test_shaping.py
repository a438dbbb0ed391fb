"""The worker's events as OpenAI's objects (shaping.py), each checked against its schema model: a whole chat
completion and completion (logprobs, text offsets, echo), and the chunks of streamed ones (role first,
finish, the usage chunk)."""

from __future__ import annotations

import json
from typing import Any

from tuning_service.inference import shaping as sh
from tuning_service.schema.inference import ChatCompletion, ChatCompletionChunk, Completion

LP = [{"token": "he", "logprob": -0.5, "top": [["he", -0.5], ["ha", -1.5]]}]
EVENTS: list[dict[str, Any]] = [
    {"type": "start", "prompt_tokens": 3},
    {"type": "delta", "index": 0, "text": "he", "logprobs": LP},
    {"type": "delta", "index": 1, "text": "x", "logprobs": LP},
    {"type": "delta", "index": 0, "text": "llo", "logprobs": [{"token": "llo", "logprob": -0.1, "top": []}]},
    {"type": "finish", "index": 0, "reason": "stop", "completion_tokens": 2},
    {"type": "finish", "index": 1, "reason": "length", "completion_tokens": 1},
    {"type": "done", "usage": {"prompt_tokens": 3, "completion_tokens": 3}},
]


def collected(events: list[dict[str, Any]] = EVENTS) -> sh.Collected:
    got = sh.Collected()
    for e in events:
        got.add(e)
    return got


def test_a_whole_chat_completion() -> None:
    out = sh.chat_completion("chatcmpl-1", "m", collected(), want_logprobs=True)
    ChatCompletion.model_validate(out)
    assert [c["message"]["content"] for c in out["choices"]] == ["hello", "x"]
    assert [c["finish_reason"] for c in out["choices"]] == ["stop", "length"]
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    first = out["choices"][0]["logprobs"]["content"][0]
    assert first == {
        "token": "he",
        "logprob": -0.5,
        "bytes": [104, 101],
        "top_logprobs": [
            {"token": "he", "logprob": -0.5, "bytes": [104, 101]},
            {"token": "ha", "logprob": -1.5, "bytes": [104, 97]},
        ],
    }
    assert sh.chat_completion("c", "m", collected(), want_logprobs=False)["choices"][0]["logprobs"] is None


def test_a_completion_with_echo_counts_text_offsets_from_the_prompt() -> None:
    events = [
        {
            "type": "echo",
            "index": 0,
            "text": "ab",
            "logprobs": [
                {"token": "a", "logprob": None, "top": []},
                {"token": "b", "logprob": -2.0, "top": [["b", -2.0]]},
            ],
        },
        {
            "type": "delta",
            "index": 0,
            "text": "c",
            "logprobs": [{"token": "c", "logprob": -1.0, "top": [["c", -1.0]]}],
        },
        {"type": "finish", "index": 0, "reason": "length", "completion_tokens": 1},
        {"type": "done", "usage": {"prompt_tokens": 2, "completion_tokens": 1}},
    ]
    out = sh.completion("cmpl-1", "m", collected(events), True, ["ab"], 1, echo=True)
    Completion.model_validate(out)
    lp = out["choices"][0]["logprobs"]
    assert out["choices"][0]["text"] == "abc"
    assert lp == {
        "tokens": ["a", "b", "c"],
        "token_logprobs": [None, -2.0, -1.0],
        "top_logprobs": [None, {"b": -2.0}, {"c": -1.0}],
        "text_offset": [0, 1, 2],
    }
    # Without echo the offsets start after the prompt, as OpenAI's do.
    plain = sh.completion("cmpl-2", "m", collected(events[1:]), True, ["ab"], 1, echo=False)
    assert plain["choices"][0]["logprobs"]["text_offset"] == [2]


def _chunks(writer: sh.ChunkWriter, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    raw = b"".join(writer.event(e) for e in events)
    return [json.loads(line[6:]) for line in raw.decode().split("\n\n") if line]


def test_chat_chunks_name_the_role_first_then_text_then_finish_then_usage() -> None:
    chunks = _chunks(sh.ChunkWriter("chat", "m", True, True, [], 2, False), EVENTS)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    assert len({c["id"] for c in chunks}) == 1
    zero = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == 0]
    assert zero[0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["delta"].get("content") or "" for c in zero) == "hello"
    assert [c["finish_reason"] for c in zero] == [None, None, None, "stop"]
    assert zero[1]["logprobs"]["content"][0]["token"] == "he"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 6
    without_usage = _chunks(sh.ChunkWriter("chat", "m", False, False, [], 2, False), EVENTS)
    assert all(c["choices"] and c["usage"] is None for c in without_usage)


def test_completion_chunks_carry_text_and_offsets() -> None:
    chunks = _chunks(sh.ChunkWriter("completion", "m", True, False, ["pr"], 2, False), EVENTS)
    for c in chunks:
        Completion.model_validate(c)
    zero = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == 0]
    assert "".join(c["text"] for c in zero) == "hello"
    assert [c["logprobs"]["text_offset"] for c in zero if c["logprobs"]] == [[2], [4]]
    assert zero[-1]["finish_reason"] == "stop"

"""`tuning chat` and `tuning models` against the stub: streamed answers, history, --compare-base, --json,
exit codes."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tests.sdk.objects import (
    FINE_TUNE_ID,
    chat_chunk_body,
    chat_completion_body,
    deleted_model_body,
    fine_tune_body,
    model_body,
    model_list_body,
    sse,
)
from tests.sdk.stub import Handler, Recorded, StubServer, error, reply
from tuning_sdk import cli

TUNED = "ft:tiny-llama:key_ab12:demo:ftjob-abc"


def answer_stream(answers: dict[str, list[str]] | None = None, *, fail_after: int | None = None) -> Any:
    """A chat completions route that streams, for each request, the next answer of its model (`answers`:
    model -> answers in order; default: "answer N" for the Nth request). `fail_after`: send that many
    pieces, then an engine_crashed error event."""
    count = {"n": 0}

    def action(h: Handler, req: Recorded) -> None:
        body = req.json()
        count["n"] += 1
        text = answers[body["model"]].pop(0) if answers is not None else f"answer {count['n']}"
        pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
        h.start_stream()
        h.chunk(sse(chat_chunk_body("", role="assistant", model=body["model"]), done=False))
        for i, piece in enumerate(pieces):
            if fail_after is not None and i == fail_after:
                err = {"code": "engine_crashed", "message": "the engine died", "param": None, "type": "x"}
                h.chunk(sse({"error": err}, done=False))
                h.end_stream()
                return
            h.chunk(sse(chat_chunk_body(piece, model=body["model"]), done=False))
        h.chunk(sse(chat_chunk_body(finish_reason="stop", model=body["model"])))
        h.end_stream()

    return action


def sent_messages(stub: StubServer) -> list[list[dict[str, str]]]:
    return [r.json()["messages"] for r in stub.calls("POST", "/v1/chat/completions")]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---- --prompt --------------------------------------------------------------------------------------------


def test_prompt_streams_one_answer(stub: StubServer, run) -> None:
    stub.route("POST", "/v1/chat/completions", answer_stream({"tiny-llama": ["Hello, world!"]}))
    code, out, err = run(
        "chat", "tiny-llama", "--prompt", "Hi", "--system", "Be kind.", "--temperature", "0", "--max-tokens",
        "20", "--seed", "3",
    )  # fmt: skip
    assert (code, out, err) == (0, "Hello, world!\n", "")
    (req,) = stub.calls("POST", "/v1/chat/completions")
    assert req.json() == {
        "model": "tiny-llama",
        "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "temperature": 0.0,
        "max_tokens": 20,
        "seed": 3,
    }


def test_prompt_json_prints_the_completion(stub: StubServer, run) -> None:
    stub.route("POST", "/v1/chat/completions", reply(200, chat_completion_body("Hi!")))
    code, out, _ = run("chat", "tiny-llama", "--prompt", "Hello", "--json")
    assert code == 0 and json.loads(out) == chat_completion_body("Hi!")
    assert "stream" not in stub.calls("POST", "/v1/chat/completions")[0].json()
    code, out, _ = run("--json", "chat", "tiny-llama", "--prompt", "Hello")  # before the command too
    assert code == 0 and json.loads(out)["object"] == "chat.completion"


def test_json_needs_prompt(stub: StubServer, run) -> None:
    code, out, err = run("chat", "tiny-llama", "--json")
    assert code == cli.EXIT_USAGE and "--json needs --prompt" in err
    assert json.loads(out)["error"]["message"].startswith("--json needs --prompt")
    assert stub.requests == []


# ---- interactive -----------------------------------------------------------------------------------------


def test_interactive_keeps_the_history(stub: StubServer, run, monkeypatch: pytest.MonkeyPatch) -> None:
    stub.route("POST", "/v1/chat/completions", answer_stream())
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n\nHow are you?\n/exit\nnever sent\n"))
    code, out, err = run("chat", "tiny-llama", "--system", "S")
    assert (code, out, err) == (0, "answer 1\nanswer 2\n", "")  # no prompt: stdin is not a terminal
    assert sent_messages(stub) == [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Hello"}],
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "answer 1"},
            {"role": "user", "content": "How are you?"},
        ],
    ]


def test_interactive_ends_at_end_of_input_and_prompts_on_a_terminal(
    stub: StubServer, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.route("POST", "/v1/chat/completions", answer_stream())
    monkeypatch.setattr("sys.stdin", FakeTTY("one\ntwo\n"))
    code, out, err = run("chat", "tiny-llama")
    assert code == 0 and out == "> answer 1\n> answer 2\n> \n" and "/exit" in err
    assert len(stub.calls("POST", "/v1/chat/completions")) == 2


# ---- --compare-base --------------------------------------------------------------------------------------


def test_compare_base_answers_with_both_under_headers(
    stub: StubServer, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.route("GET", "/v1/models/", reply(200, fine_tune_body(TUNED, parent="tiny-llama")))
    stub.route(
        "POST",
        "/v1/chat/completions",
        answer_stream({f"{TUNED}:base": ["base one", "base two"], TUNED: ["tuned one", "tuned two"]}),
    )
    code, out, err = run("chat", TUNED, "--prompt", "Hi", "--compare-base")
    assert code == 0, err
    assert out == f"── base (tiny-llama) ──\nbase one\n── tuned ({TUNED}) ──\ntuned one\n"
    assert [r.path for r in stub.calls("GET", "/v1/models/")] == [f"/v1/models/{TUNED}"]

    # Interactive: each model continues its own side of the same conversation.
    stub.route(
        "POST",
        "/v1/chat/completions",
        answer_stream({f"{TUNED}:base": ["b1", "b2"], TUNED: ["t1", "t2"]}),
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("First\nSecond\n"))
    code, out, _ = run("chat", TUNED, "--compare-base")
    assert code == 0 and out.count("── base (tiny-llama) ──") == 2 and out.endswith(f"({TUNED}) ──\nt2\n")
    last_base, last_tuned = sent_messages(stub)[-2:]
    assert last_base[1] == {"role": "assistant", "content": "b1"}
    assert last_tuned[1] == {"role": "assistant", "content": "t1"}
    assert last_tuned[-1] == {"role": "user", "content": "Second"}


def test_compare_base_with_json(stub: StubServer, run) -> None:
    stub.route("GET", "/v1/models/", reply(200, fine_tune_body(TUNED, parent="tiny-llama")))
    stub.route(
        "POST",
        "/v1/chat/completions",
        reply(200, chat_completion_body("b", model="tiny-llama")),
        reply(200, chat_completion_body("t", model=TUNED)),
    )
    code, out, _ = run("chat", TUNED, "--prompt", "Hi", "--compare-base", "--json")
    answers = json.loads(out)
    assert code == 0 and set(answers) == {"base", "tuned"}
    assert (
        answers["base"]["model"] == "tiny-llama"
        and answers["tuned"]["choices"][0]["message"]["content"] == "t"
    )


def test_compare_base_on_a_base_model_is_a_usage_error(stub: StubServer, run) -> None:
    stub.route("GET", "/v1/models/", reply(200, model_body("tiny-llama")))
    code, out, err = run("chat", "tiny-llama", "--prompt", "Hi", "--compare-base")
    assert code == cli.EXIT_USAGE and out == ""
    assert "--compare-base needs a fine-tuned model" in err and "tiny-llama" in err
    assert stub.calls("POST", "/v1/chat/completions") == []


# ---- errors ----------------------------------------------------------------------------------------------


def test_errors_exit_as_other_commands_do(stub: StubServer, run) -> None:
    stub.route("POST", "/v1/chat/completions", error(404, "model_not_found", "no model 'x'", "model"))
    code, out, err = run("chat", "x", "--prompt", "Hi")
    assert code == cli.EXIT_NOT_FOUND and "no model 'x'" in err and err.startswith("error: ") and out == ""
    code, out, _ = run("--json", "chat", "x", "--prompt", "Hi")
    assert code == cli.EXIT_NOT_FOUND and json.loads(out)["error"]["code"] == "model_not_found"
    stub.route("POST", "/v1/chat/completions", error(400, "context_length_exceeded", "too long", "messages"))
    code, _, err = run("chat", "m", "--prompt", "Hi")
    assert code == cli.EXIT_REJECTED and "(param: messages)" in err
    stub.route("GET", "/v1/models/", error(404, "model_not_found", "no such fine-tune"))
    assert run("chat", TUNED, "--prompt", "Hi", "--compare-base")[0] == cli.EXIT_NOT_FOUND


def test_an_error_mid_answer_ends_the_line_and_exits_7(stub: StubServer, run) -> None:
    stub.route("POST", "/v1/chat/completions", answer_stream({"m": ["Hello there"]}, fail_after=2))
    code, out, err = run("chat", "m", "--prompt", "Hi")
    assert code == cli.EXIT_SERVER
    assert out == "Hello \n"  # what came, then a newline: the error starts on its own line
    assert "[engine_crashed]" in err and "the engine died" in err


# ---- tuning models -----------------------------------------------------------------------------------------


def test_models_commands(stub: StubServer, run) -> None:
    stub.route("GET", "/v1/models", reply(200, model_list_body([model_body(), fine_tune_body()])))
    code, out, _ = run("models", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "PARENT", "OWNED", "BY", "METHOD", "ADAPTER", "JOB"]
    assert lines[1].split() == ["tiny-llama", "-", "system", "-", "-", "-"]
    assert lines[2].split() == [
        FINE_TUNE_ID,
        "meta-llama/Llama-2-7b-hf",
        "key_ab12",
        "sft",
        "qlora",
        "ftjob-abc",
    ]
    stub.route("GET", "/v1/models/", reply(200, fine_tune_body(method="dpo", adapter="lora")))
    code, out, _ = run("models", "get", FINE_TUNE_ID)
    assert code == 0 and out.splitlines()[1].split()[3:5] == ["dpo", "lora"]
    code, out, _ = run("models", "list", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)] == ["tiny-llama", FINE_TUNE_ID]
    stub.route("GET", "/v1/models/", reply(200, fine_tune_body()))
    code, out, _ = run("--json", "models", "get", FINE_TUNE_ID)
    assert code == 0 and json.loads(out)["parent"] == "meta-llama/Llama-2-7b-hf"
    stub.route("DELETE", "/v1/models/", reply(200, deleted_model_body()))
    assert run("models", "delete", FINE_TUNE_ID) == (0, f"deleted {FINE_TUNE_ID}\n", "")
    assert stub.calls("DELETE", "/v1/models/")[0].path == f"/v1/models/{FINE_TUNE_ID}"
    stub.route("DELETE", "/v1/models/", error(403, "model_not_deletable", "a base model"))
    assert run("models", "delete", "tiny-llama")[0] == cli.EXIT_AUTH
    stub.route("GET", "/v1/models", reply(200, model_list_body([])))
    assert run("models", "list") == (0, "no models\n", "")

"""client.models, client.chat.completions and client.completions against the stub: paths, bodies, streams,
errors and retries."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.sdk.objects import (
    FINE_TUNE_ID,
    chat_chunk_body,
    chat_completion_body,
    completion_body,
    deleted_model_body,
    fine_tune_body,
    model_body,
    model_list_body,
    sse,
    token_logprob_body,
    usage_body,
)
from tests.sdk.stub import Action, Handler, Recorded, StubServer, delay, drop, error, reply
from tuning_sdk import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    InternalServerError,
    Model,
    ModelDeleted,
    NotFoundError,
    PermissionDeniedError,
    Stream,
    TuningClient,
    TuningError,
)
from tuning_sdk.resources.models import _model_path

HELLO = [
    chat_chunk_body("", role="assistant"),
    chat_chunk_body("Hel"),
    chat_chunk_body("lo!"),
    chat_chunk_body(finish_reason="stop"),
]


def stream(text: str, *, end: bool = True, headers: dict[str, str] | None = None) -> Action:
    """Answer with an event stream of `text` (chunked); `end=False` drops the connection after it."""

    def action(h: Handler, req: Recorded) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        for line in text.splitlines(keepends=True):  # line by line: the SDK must join what arrives
            h.chunk(line)
        if end:
            h.end_stream()
        else:
            h.abort()

    return action


# ---- models ----------------------------------------------------------------------------------------------


def test_models_list(stub: StubServer, client: TuningClient) -> None:
    stub.route("GET", "/v1/models", reply(200, model_list_body([model_body(), fine_tune_body()])))
    models = client.models.list()
    assert [type(m) for m in models] == [Model, Model]
    base, tuned = models
    assert (base.id, base.owned_by, base.parent, base.job_id, base.is_fine_tune) == (
        "tiny-llama",
        "system",
        None,
        None,
        False,
    )
    assert (tuned.id, tuned.parent, tuned.owned_by, tuned.job_id, tuned.method, tuned.adapter) == (
        FINE_TUNE_ID,
        "meta-llama/Llama-2-7b-hf",
        "key_ab12",
        "ftjob-abc",
        "sft",
        "qlora",
    )
    assert (base.method, base.adapter) == (None, None)
    assert tuned.is_fine_tune and tuned.created == 1764150000 and tuned.to_dict() == fine_tune_body()
    (req,) = stub.calls("GET", "/v1/models")
    assert req.path == "/v1/models" and req.query == {}


def test_a_model_from_an_older_service_reads_its_method_as_todays() -> None:
    # Off the contract on purpose: before preference tuning a fine-tune's `method` was its adapter.
    old = {k: v for k, v in fine_tune_body().items() if k != "adapter"}
    tuned = Model.from_dict({**old, "method": "lora"})
    assert (tuned.method, tuned.adapter) == ("sft", "lora") and tuned.to_dict()["method"] == "lora"
    assert Model.from_dict(fine_tune_body(method="simpo", adapter="lora")).method == "simpo"


def test_model_ids_keep_slashes_and_colons_in_the_path(stub: StubServer, client: TuningClient) -> None:
    stub.route("GET", "/v1/models/", reply(200, fine_tune_body()))
    stub.route("DELETE", "/v1/models/", reply(200, deleted_model_body()))
    model = client.models.retrieve(FINE_TUNE_ID)
    assert model.id == FINE_TUNE_ID and model.parent == "meta-llama/Llama-2-7b-hf"
    deleted = client.models.delete(FINE_TUNE_ID)
    assert deleted == ModelDeleted(id=FINE_TUNE_ID, deleted=True, object="model")
    paths = [r.path for r in stub.requests]
    assert paths == [f"/v1/models/{FINE_TUNE_ID}"] * 2  # sent as is: the route is /v1/models/{model:path}


def test_model_path_encodes_only_what_is_unsafe() -> None:
    assert _model_path(FINE_TUNE_ID) == FINE_TUNE_ID
    assert _model_path("a b?c#d%e") == "a%20b%3Fc%23d%25e"
    assert _model_path("org/../x") == "org/%2E%2E/x"  # a dot segment would be resolved away
    assert _model_path("modèle") == "mod%C3%A8le"
    with pytest.raises(ValueError):
        _model_path("")


def test_model_errors(stub: StubServer, client: TuningClient) -> None:
    stub.route("GET", "/v1/models/", error(404, "model_not_found", "no such model", "model"))
    with pytest.raises(NotFoundError) as info:
        client.models.retrieve("nope")
    assert (info.value.code, info.value.param, info.value.request_id) == (
        "model_not_found",
        "model",
        "req-model_not_found",
    )
    stub.route("DELETE", "/v1/models/", error(403, "model_not_deletable", "a base model"))
    with pytest.raises(PermissionDeniedError) as denied:
        client.models.delete("tiny-llama")
    assert denied.value.code == "model_not_deletable" and denied.value.status_code == 403


# ---- chat completions ------------------------------------------------------------------------------------


def test_chat_create_sends_only_the_given_parameters(stub: StubServer, client: TuningClient) -> None:
    stub.route("POST", "/v1/chat/completions", reply(200, chat_completion_body("Hi!")))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    r = client.chat.completions.create(model="tiny-llama", messages=messages)
    assert isinstance(r, ChatCompletion)
    assert r.choices[0].message.content == "Hi!" and r.text == "Hi!"
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "stop"
    assert (
        r.usage.total_tokens == 8
        and r.system_fingerprint == "fp_tuning"
        and r.to_dict()["id"] == "chatcmpl-1"
    )
    (req,) = stub.calls("POST", "/v1/chat/completions")
    assert req.json() == {"model": "tiny-llama", "messages": messages}
    assert req.header("Idempotency-Key") and req.header("Content-Type") == "application/json"

    client.chat.completions.create(
        model="m",
        messages=(m for m in messages),  # any iterable
        temperature=0,
        top_p=0.9,
        max_tokens=5,
        stop=("\n", "END"),
        seed=7,
        n=2,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=3,
        user="u",
    )
    body = stub.calls("POST", "/v1/chat/completions")[-1].json()
    assert body == {
        "model": "m",
        "messages": messages,
        "temperature": 0,
        "top_p": 0.9,
        "max_tokens": 5,
        "stop": ["\n", "END"],
        "seed": 7,
        "n": 2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logprobs": True,
        "top_logprobs": 3,
        "user": "u",
    }
    client.chat.completions.create(model="m", messages=messages, max_completion_tokens=9, stop="x")
    body = stub.calls("POST", "/v1/chat/completions")[-1].json()
    assert (body["max_completion_tokens"], body["stop"]) == (9, "x") and "max_tokens" not in body


def test_chat_logprobs_are_typed(stub: StubServer, client: TuningClient) -> None:
    logprobs = {
        "content": [token_logprob_body("Hi", -0.1, {"Hi": -0.1, "Hey": -2.5}), token_logprob_body("!", -0.3)],
        "refusal": None,
    }
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "Hi!", "refusal": None},
        "finish_reason": "length",
        "logprobs": logprobs,
    }
    stub.route("POST", "/v1/chat/completions", reply(200, chat_completion_body(choices=[choice])))
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None and r.choices[0].finish_reason == "length"
    first, second = lp.content
    assert (first.token, first.logprob, first.bytes) == ("Hi", -0.1, (72, 105))
    assert [(t.token, t.logprob) for t in first.top_logprobs] == [("Hi", -0.1), ("Hey", -2.5)]
    assert second.top_logprobs == () and isinstance(second.logprob, float)


def test_chat_stream_yields_chunks_until_done(stub: StubServer, client: TuningClient) -> None:
    stub.route(
        "POST", "/v1/chat/completions", stream(sse(*HELLO, chat_chunk_body(choices=[], usage=usage_body())))
    )
    s = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert isinstance(s, Stream) and not s.closed
    chunks = list(s)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks) and len(chunks) == 5
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.text for c in chunks) == "Hello!"
    assert [c.choices[0].finish_reason for c in chunks[:4]] == [None, None, None, "stop"]
    assert chunks[-1].choices == () and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8
    assert s.closed
    (req,) = stub.calls("POST", "/v1/chat/completions")
    assert req.json()["stream"] is True and req.json()["stream_options"] == {"include_usage": True}
    assert req.header("Accept") == "text/event-stream"


def test_stream_is_parsed_whatever_the_chunking(stub: StubServer, client: TuningClient) -> None:
    text = sse(*HELLO).replace("\n", "\r\n") + ": a trailing comment\n\n"

    def byte_by_byte(h: Handler, req: Recorded) -> None:
        h.start_stream()
        for i in range(0, len(text), 3):
            h.chunk(text[i : i + 3])
        h.end_stream()

    stub.route("POST", "/v1/chat/completions", byte_by_byte)
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    assert "".join(c.text for c in s) == "Hello!"


def test_an_error_event_mid_stream_raises_its_status_class(stub: StubServer, client: TuningClient) -> None:
    failure = {"error": {"code": "engine_crashed", "message": "the engine died", "param": None, "type": "x"}}
    stub.route(
        "POST",
        "/v1/chat/completions",
        stream(sse(*HELLO[:2], failure, done=False), headers={"X-Request-ID": "req-42"}),
    )
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    got = []
    with pytest.raises(InternalServerError) as info:
        for chunk in s:
            got.append(chunk.text)
    assert got == ["", "Hel"]  # what came before the error was delivered
    e = info.value
    assert (e.status_code, e.code, e.message, e.request_id) == (
        503,
        "engine_crashed",
        "the engine died",
        "req-42",
    )
    assert s.closed
    assert len(stub.calls("POST", "/v1/chat/completions")) == 1  # a stream that began is never retried


@pytest.mark.parametrize(
    ("err", "status", "cls"),
    [
        (
            {"code": "context_length_exceeded", "message": "too long", "param": "messages"},
            400,
            BadRequestError,
        ),
        ({"code": "model_not_found", "message": "gone"}, 404, NotFoundError),
        ({"code": "no_gpu_available", "message": "busy"}, 503, InternalServerError),
        ({"code": "something_new", "message": "?", "type": "invalid_request_error"}, 400, BadRequestError),
        ({"code": "something_new", "message": "?"}, 500, InternalServerError),
        ({"message": "with a status", "status_code": 404}, 404, NotFoundError),
    ],
)
def test_stream_error_codes_map_to_statuses(
    stub: StubServer, client: TuningClient, err: dict[str, Any], status: int, cls: type
) -> None:
    stub.route("POST", "/v1/completions", stream(sse({"error": err}, done=False)))
    s = client.completions.create(model="m", prompt="x", stream=True)
    with pytest.raises(cls) as info:
        next(s)
    assert info.value.status_code == status and info.value.message == err["message"]
    if "param" in err:
        assert info.value.param == err["param"]


def test_a_stream_cut_short_raises_and_is_not_retried(
    stub: StubServer, client: TuningClient, sleeps: list[float]
) -> None:
    stub.route("POST", "/v1/chat/completions", stream(sse(*HELLO[:2], done=False), end=False))
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(APIConnectionError):
        list(s)
    # Ended cleanly, but before [DONE]: the answer is incomplete, and says so.
    stub.route("POST", "/v1/chat/completions", stream(sse(*HELLO[:2], done=False)))
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(APIConnectionError, match=r"\[DONE\]"):
        list(s)
    assert len(stub.calls("POST", "/v1/chat/completions")) == 2 and sleeps == []


def test_a_malformed_event_raises(stub: StubServer, client: TuningClient) -> None:
    stub.route("POST", "/v1/chat/completions", stream(sse("not json")))
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(TuningError, match="not JSON"):
        list(s)
    assert s.closed


def test_a_json_answer_to_a_stream_request_is_an_error(stub: StubServer, client: TuningClient) -> None:
    stub.route("POST", "/v1/chat/completions", reply(200, chat_completion_body()))
    with pytest.raises(TuningError, match="not events"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)


def test_closing_the_stream_closes_the_connection(stub: StubServer, client: TuningClient) -> None:
    """A client that stops reading (close(), or leaving the `with`) hangs up: the service sees it leave and
    stops generating."""
    left = threading.Event()
    sent: list[int] = []

    def endless(h: Handler, req: Recorded) -> None:
        h.start_stream()
        h.chunk(sse(chat_chunk_body("", role="assistant"), done=False))
        try:
            for i in range(500):  # 10 s at most
                h.chunk(sse(chat_chunk_body(f"{i} "), done=False))
                sent.append(i)
                time.sleep(0.02)
        except OSError:  # the client hung up
            left.set()
            h.close_connection = True

    stub.route("POST", "/v1/chat/completions", endless)
    with client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    ) as s:
        for chunk in s:
            if chunk.text == "2 ":
                break
    assert s.closed
    assert left.wait(5), "the server kept writing to an open connection"
    assert len(sent) < 100
    s.close()  # twice is fine

    # close() without a `with`, before a single chunk was read, hangs up too.
    left.clear()
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    s.close()
    assert left.wait(5) and s.closed
    with pytest.raises(StopIteration):
        next(s)
    # The pool is fine afterwards: the next request gets a fresh connection.
    stub.route("GET", "/v1/models", reply(200, model_list_body([])))
    assert client.models.list() == []


def test_chat_create_is_retried_like_any_post_honouring_retry_after(
    stub: StubServer, client: TuningClient, sleeps: list[float]
) -> None:
    busy = error(503, "engine_unavailable", "loading the model")
    stub.route(
        "POST",
        "/v1/chat/completions",
        reply(503, {"error": {"code": "no_gpu_available", "message": "busy"}}, {"Retry-After": "4"}),
        busy,
        reply(200, chat_completion_body("ok")),
    )
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert r.text == "ok"
    calls = stub.calls("POST", "/v1/chat/completions")
    assert len(calls) == 3 and sleeps[0] == 4.0 and len(sleeps) == 2
    assert len({c.header("Idempotency-Key") for c in calls}) == 1  # one call: one key on every try

    # After max_retries the 503 is raised, with its code.
    stub.route("POST", "/v1/chat/completions", error(503, "engine_crashed", "crashed"))
    with pytest.raises(InternalServerError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "engine_crashed" and info.value.status_code == 503


def test_a_stream_whose_request_failed_before_any_chunk_is_retried(
    stub: StubServer, client: TuningClient, sleeps: list[float]
) -> None:
    stub.route(
        "POST",
        "/v1/chat/completions",
        error(503, "no_gpu_available", "busy"),
        drop(),
        stream(sse(*HELLO)),
    )
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    assert "".join(c.text for c in s) == "Hello!"
    assert len(stub.calls("POST", "/v1/chat/completions")) == 3 and len(sleeps) == 2


def test_a_per_call_timeout(stub: StubServer, sleeps: list[float]) -> None:
    """`timeout=` bounds the wait for one call (a cold start loads the model first: give it longer)."""
    stub.route("POST", "/v1/chat/completions", delay(0.5, reply(200, chat_completion_body())))
    with TuningClient(api_key="k", base_url=stub.base_url, timeout=5, max_retries=0) as c:
        with pytest.raises(APITimeoutError):
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], timeout=0.1)
        assert c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}]).text
        stub.route("POST", "/v1/completions", delay(0.5, stream(sse(completion_body()))))
        with pytest.raises(APITimeoutError):
            c.completions.create(model="m", prompt="x", stream=True, timeout=0.1)


@pytest.mark.parametrize(
    ("status", "code", "param", "cls"),
    [
        (400, "context_length_exceeded", "messages", BadRequestError),
        (400, "invalid_value", "temperature", BadRequestError),
        (400, "invalid_request", "logit_bias", BadRequestError),
        (404, "model_not_found", "model", NotFoundError),
    ],
)
def test_request_errors_are_not_retried(
    stub: StubServer,
    client: TuningClient,
    sleeps: list[float],
    status: int,
    code: str,
    param: str,
    cls: type,
) -> None:
    stub.route("POST", "/v1/chat/completions", error(status, code, "no", param))
    with pytest.raises(cls) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    assert (info.value.code, info.value.param) == (code, param)
    assert len(stub.calls("POST", "/v1/chat/completions")) == 1 and sleeps == []


# ---- completions -----------------------------------------------------------------------------------------


def test_completions_score_a_text_with_echo_and_logprobs(stub: StubServer, client: TuningClient) -> None:
    logprobs = {
        "tokens": ["The", " sky", " is", " blue"],
        "token_logprobs": [None, -3.5, -0.25, -1.0],
        "top_logprobs": [None, {" sky": -3.5, " sun": -2.0}, {" is": -0.25}, {" blue": -1.0}],
        "text_offset": [0, 3, 7, 10],
    }
    body = completion_body("The sky is blue", logprobs=logprobs, usage=usage_body(4, 0))
    stub.route("POST", "/v1/completions", reply(200, body))
    r = client.completions.create(
        model="tiny-llama", prompt="The sky is blue", max_tokens=0, echo=True, logprobs=1
    )
    assert isinstance(r, Completion) and r.text == "The sky is blue" and r.usage is not None
    lp = r.choices[0].logprobs
    assert lp is not None
    assert lp.tokens == ("The", " sky", " is", " blue") and lp.text_offset == (0, 3, 7, 10)
    assert lp.token_logprobs == (None, -3.5, -0.25, -1.0)
    assert lp.top_logprobs[0] is None and lp.top_logprobs[1] == {" sky": -3.5, " sun": -2.0}
    assert sum(x for x in lp.token_logprobs if x is not None) == -4.75
    assert stub.calls("POST", "/v1/completions")[0].json() == {
        "model": "tiny-llama",
        "prompt": "The sky is blue",
        "max_tokens": 0,
        "echo": True,
        "logprobs": 1,
    }


def test_completions_parameters_and_several_prompts(stub: StubServer, client: TuningClient) -> None:
    stub.route("POST", "/v1/completions", reply(200, completion_body(usage=usage_body())))
    r = client.completions.create(
        model="m", prompt=["a", "b"], max_tokens=3, temperature=0.5, stop=["."], seed=1, n=1, user="u"
    )
    assert r.choices[0].finish_reason == "length" and r.choices[0].logprobs is None
    assert stub.calls("POST", "/v1/completions")[0].json() == {
        "model": "m",
        "prompt": ["a", "b"],
        "max_tokens": 3,
        "temperature": 0.5,
        "stop": ["."],
        "seed": 1,
        "n": 1,
        "user": "u",
    }


def test_completions_stream(stub: StubServer, client: TuningClient) -> None:
    chunks = [
        completion_body(" Once", finish_reason=None),
        completion_body(" upon", finish_reason=None),
        completion_body("", finish_reason="length"),
    ]
    stub.route("POST", "/v1/completions", stream(sse(*chunks)))
    with client.completions.create(model="m", prompt="x", stream=True, max_tokens=2) as s:
        got = list(s)
    assert all(isinstance(c, Completion) for c in got) and "".join(c.text for c in got) == " Once upon"
    assert got[-1].choices[0].finish_reason == "length" and got[0].usage is None
    assert json.loads(stub.calls("POST", "/v1/completions")[0].body)["stream"] is True


# ---- the models, off the contract --------------------------------------------------------------------------


def test_inference_objects_tolerate_missing_and_unknown_fields() -> None:
    # Off the contract on purpose (a newer or broken server): never an exception, nothing lost.
    r = ChatCompletion.from_dict({"id": "c", "choices": [{"message": {"content": "x"}}, "junk"], "new": 1})
    assert r.text == "x" and len(r.choices) == 1 and r.usage.total_tokens == 0 and r.raw["new"] == 1
    assert ChatCompletion.from_dict({"id": "c"}).text == ""
    chunk = ChatCompletionChunk.from_dict({"id": "c", "choices": [{"delta": None}]})
    assert chunk.text == "" and chunk.usage is None
    c = Completion.from_dict(
        {"id": "c", "choices": [{"text": "t", "logprobs": {"token_logprobs": [1, "x"]}}]}
    )
    assert c.choices[0].logprobs is not None and c.choices[0].logprobs.token_logprobs == (1.0, None)
    m = Model.from_dict({"id": "x", "future": True})
    assert (m.owned_by, m.parent, m.created) == ("", None, 0) and m.to_dict() == {"id": "x", "future": True}

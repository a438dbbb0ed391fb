"""Trying a tuned model end to end: real service, real training of three fine-tunes on the tiny model, the
real inference worker, the official `openai` client.

- `/v1/models` lists the bases and the key's own fine-tunes; another key's fine-tune is a 404 everywhere.
- Chat completions return text; streamed chunks join to the whole answer at temperature 0.
- The adapter is really applied: on a held-out question of the training data's pattern, the tuned model
  gives the reference answer a clearly higher log-likelihood than the base (scored with `echo`).
- Two fine-tunes served alternately keep their own answers, and the worker counts the switches.
- A QLoRA fine-tune is served on a 4-bit base.
- Errors: a prompt over the context, bad parameters, a client that hangs up (its generation stops), a killed
  worker (503, then the next request succeeds), deleting a model.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import DEV_KEY, OTHER_KEY, ServiceProcess, write_jsonl

pytestmark = pytest.mark.slow

HP = {
    "epochs": 3,
    "batch_size": 8,
    "max_seq_length": 64,
    "max_steps": 60,
    "logging_steps": 20,
    "learning_rate": 0.002,
}
COW = [{"role": "user", "content": "What does the cow say?"}]


@pytest.fixture(scope="module")
def served(service_env) -> Any:
    """A service with three succeeded fine-tunes of DEV_KEY: `a` (LoRA on the training data), `b` (LoRA on
    data whose every answer is "I do not know.") and `q` (QLoRA on the training data)."""
    rows = [json.loads(line) for line in (service_env.files_root / "data" / "train.jsonl").open()]
    unknowing = [
        {"messages": [*r["messages"][:-1], {"role": "assistant", "content": "I do not know."}]} for r in rows
    ]
    write_jsonl(service_env.files_root / "data" / "unknowing.jsonl", unknowing)
    svc = service_env.start("inference", extra_env={"TUNING_INFERENCE_IDLE_SECONDS": "120"})
    try:
        jobs = {
            "a": svc.create_job(
                model="tiny-llama",
                training_file="data/train.jsonl",
                method="lora",
                suffix="a",
                hyperparameters=HP,
            ),
            "b": svc.create_job(
                model="tiny-llama",
                training_file="data/unknowing.jsonl",
                method="lora",
                suffix="b",
                hyperparameters=HP,
            ),
            "q": svc.create_job(
                model="tiny-llama",
                training_file="data/train.jsonl",
                method="qlora",
                suffix="q",
                hyperparameters={**HP, "max_steps": 10},
            ),
        }
        done = {k: svc.wait_for(j["id"], {"succeeded", "failed"}, timeout=300) for k, j in jobs.items()}
        for k, job in done.items():
            assert job["status"] == "succeeded", (k, job, svc.output()[-3000:])
        yield svc, done
    finally:
        svc.shutdown()


def client(svc: ServiceProcess, key: str = DEV_KEY) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=svc.base_url + "/v1", api_key=key, max_retries=0, timeout=120)


def openai_id(svc: ServiceProcess, job: dict[str, Any]) -> str:
    """The fine-tune's id as /v1/models lists it (the OpenAI job's fine_tuned_model)."""
    return str(svc.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["fine_tuned_model"])


def chat(svc: ServiceProcess, model: str, messages: list[dict[str, str]] = COW, **kw: Any) -> str:
    out = client(svc).chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=24, **kw
    )
    return str(out.choices[0].message.content)


def metric(svc: ServiceProcess, name: str) -> float:
    m = re.search(rf"^{name}(?:_total)? (\S+)$", svc.get("/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


# ---- models ----------------------------------------------------------------------------------------------


def test_models_lists_the_bases_and_only_the_keys_own_fine_tunes(served) -> None:
    svc, jobs = served
    ids = {m.id: m for m in client(svc).models.list().data}
    tunes = {openai_id(svc, j) for j in jobs.values()}
    assert "tiny-llama" in ids and tunes <= set(ids)
    a = ids[openai_id(svc, jobs["a"])]
    assert (a.owned_by, a.parent, a.job_id, a.method, a.adapter) == (
        a.owned_by,
        "tiny-llama",
        jobs["a"]["id"],
        "sft",
        "lora",
    )
    assert ids["tiny-llama"].owned_by == "system"
    other = {m.id for m in client(svc, OTHER_KEY).models.list().data}
    assert "tiny-llama" in other and not tunes & other
    # One fine-tune, by either of its names; another key's, exactly like an unknown id.
    assert client(svc).models.retrieve(openai_id(svc, jobs["a"])).job_id == jobs["a"]["id"]
    native = svc.get(f"/v1/models/{jobs['a']['fine_tuned_model']}").json()
    assert native["id"] == openai_id(svc, jobs["a"])
    for key, model in ((OTHER_KEY, openai_id(svc, jobs["a"])), (DEV_KEY, "ft:tiny-llama:x:y:ftjob-nope")):
        resp = svc.get(f"/v1/models/{model}", key=key)
        assert (resp.status, resp.error["code"], resp.error["param"]) == (404, "model_not_found", "model")


# ---- chat ------------------------------------------------------------------------------------------------


def test_the_openai_client_chats_with_a_fine_tune_and_the_stream_joins_to_the_whole_answer(served) -> None:
    svc, jobs = served
    model = openai_id(svc, jobs["a"])
    whole = client(svc).chat.completions.create(model=model, messages=COW, temperature=0, max_tokens=24)
    text = whole.choices[0].message.content
    assert text and whole.model == model and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0 and whole.usage.prompt_tokens > 0
    stream = client(svc).chat.completions.create(
        model=model,
        messages=COW,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert joined == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # The native job's name for the fine-tune works as well.
    assert chat(svc, jobs["a"]["fine_tuned_model"]) == text


def _score(svc: ServiceProcess, model: str, prompt: str, answer: str) -> float:
    """Log-likelihood of `answer` after `prompt` (the prompt scored with echo, max_tokens 0)."""
    out = client(svc).completions.create(
        model=model, prompt=prompt + answer, max_tokens=0, echo=True, logprobs=0
    )
    lp = out.choices[0].logprobs
    return sum(v for v, at in zip(lp.token_logprobs, lp.text_offset, strict=True) if at >= len(prompt))


def test_the_adapter_is_applied_the_tuned_model_prefers_the_reference_answer(served, tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    svc, jobs = served
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    held_out = [json.loads(line) for line in (svc.files_root / "data" / "valid.jsonl").open()][:5]
    gains = []
    for row in held_out:
        question, answer = row["messages"][:-1], row["messages"][-1]["content"]
        prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
        tuned = _score(svc, openai_id(svc, jobs["a"]), prompt, answer)
        base = _score(svc, "tiny-llama", prompt, answer)
        gains.append(tuned - base)
    # Clearly: several nats better on every held-out example (the base's answers are near chance).
    assert min(gains) > 2.0, gains


def test_two_fine_tunes_served_alternately_keep_their_answers_and_the_switches_are_counted(served) -> None:
    svc, jobs = served
    a, b = openai_id(svc, jobs["a"]), openai_id(svc, jobs["b"])
    first = {a: chat(svc, a), b: chat(svc, b)}
    assert first[a] != first[b]
    assert first[b].startswith("I do not"), first[b]  # what b was taught to say
    switches = metric(svc, "tuning_inference_adapter_switches")
    for model in (a, b, a, b):
        assert chat(svc, model) == first[model]
    assert metric(svc, "tuning_inference_adapter_switches") - switches == 4
    assert metric(svc, "tuning_inference_worker_up") == 1


def test_a_qlora_fine_tune_is_served_on_a_4bit_base_and_compared_with_that_base(served) -> None:
    svc, jobs = served
    model = openai_id(svc, jobs["q"])
    assert chat(svc, model)
    stats = _worker_stats(svc)
    assert any(m["quantize"] and jobs["q"]["id"] in m["adapters"] for m in stats["loaded"]), stats
    # `<fine-tune>:base` is that 4-bit base with the adapter off: no other copy of the model is loaded.
    assert chat(svc, f"{model}:base")
    assert _worker_stats(svc)["model_loads"] == stats["model_loads"]


def _worker_stats(svc: ServiceProcess) -> dict[str, Any]:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(svc.data_dir / "inference" / "worker.sock"))
        s.sendall(b'{"op": "stats"}\n')
        return dict(json.loads(s.makefile("rb").readline()))


# ---- errors ----------------------------------------------------------------------------------------------


def _post(svc: ServiceProcess, path: str, body: dict[str, Any], key: str = DEV_KEY) -> Any:
    return svc.post(path, body, key=key)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"temperature": 3}, 400, "invalid_value", "temperature"),
        ({"n": 0}, 400, "invalid_value", "n"),
        ({"logit_bias": {"1": 2}}, 400, "invalid_request", "logit_bias"),
        ({"stream_options": {"include_usage": True}}, 400, "invalid_value", "stream_options"),
        ({"top_logprobs": 2}, 400, "invalid_value", "top_logprobs"),
        ({"max_tokens": 100_000}, 400, "context_length_exceeded", "max_tokens"),
        (
            {"messages": [{"role": "user", "content": "moo " * 2000}]},
            400,
            "context_length_exceeded",
            "messages",
        ),
        ({"messages": []}, 400, "invalid_value", "messages"),
        ({"model": "no-such-model"}, 404, "model_not_found", "model"),
    ],
)
def test_bad_requests_get_openais_envelope_naming_the_field(served, body, status, code, param) -> None:
    svc, _ = served
    resp = _post(svc, "/v1/chat/completions", {"model": "tiny-llama", "messages": COW, **body})
    assert resp.status == status, resp.text
    err = resp.error
    assert (err["code"], err["param"]) == (code, param), err
    assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_another_keys_fine_tune_is_not_found_for_chat_and_completions(served) -> None:
    svc, jobs = served
    model = openai_id(svc, jobs["a"])
    for path, extra in (("/v1/chat/completions", {"messages": COW}), ("/v1/completions", {"prompt": "hi"})):
        resp = _post(svc, path, {"model": model, **extra}, key=OTHER_KEY)
        assert (resp.status, resp.error["code"]) == (404, "model_not_found"), resp.text


# A long generation to interrupt: 16 prompts x 8 seeded high-temperature samples of up to 450 tokens, run
# one prompt after another (several seconds here, against ~0.3 s for one prompt).
LONG = {
    "model": "tiny-llama",
    "prompt": ["The cow says"] * 16,
    "temperature": 2.0,
    "seed": 0,
    "n": 8,
    "max_tokens": 450,
}
LONG_TOKENS = 16 * 8 * 450


def _wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_stops_its_generation(served, stream: bool) -> None:
    svc, _ = served
    chat(svc, "tiny-llama")  # the worker is up and the model loaded
    cancelled = metric(svc, "tuning_inference_requests_cancelled")
    generated = metric(svc, "tuning_inference_completion_tokens")
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps({**LONG, "stream": stream}),
        {"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"},
    )
    if stream:
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")  # generating
    else:
        time.sleep(0.3)
    conn.sock.shutdown(2)
    conn.close()
    _wait_for(lambda: metric(svc, "tuning_inference_requests_cancelled") == cancelled + 1)
    # Stopped early: nowhere near the tokens asked for.
    assert metric(svc, "tuning_inference_completion_tokens") - generated < LONG_TOKENS / 4
    assert chat(svc, "tiny-llama")  # and the worker serves the next request


def test_a_killed_worker_fails_its_request_with_503_and_the_next_request_succeeds(served) -> None:
    svc, _ = served
    expected = chat(svc, "tiny-llama")
    pid = svc.inference_pid()
    assert pid is not None
    result: dict[str, Any] = {}

    def long_request() -> None:
        result["resp"] = _post(svc, "/v1/completions", LONG)

    t = threading.Thread(target=long_request)
    t.start()
    _wait_for(lambda: _worker_stats(svc)["busy"])
    import os
    import signal

    os.kill(pid, signal.SIGKILL)
    t.join(60)
    resp = result["resp"]
    assert resp.status == 503, resp.text
    assert resp.error["code"] == "engine_crashed" and resp.headers.get("retry-after")
    assert chat(svc, "tiny-llama") == expected
    assert svc.inference_pid() not in (None, pid)


def test_deleting_a_fine_tune_removes_its_adapter(served) -> None:
    svc, jobs = served
    model = openai_id(svc, jobs["q"])
    assert svc.delete(f"/v1/models/{model}", key=OTHER_KEY).status == 404
    resp = svc.delete("/v1/models/tiny-llama")
    assert (resp.status, resp.error["code"]) == (403, "model_not_deletable")
    deleted = client(svc).models.delete(model)
    assert (deleted.id, deleted.deleted) == (model, True)
    assert not Path(jobs["q"]["adapter_path"] or "/nonexistent").exists()
    for resp in (
        svc.get(f"/v1/models/{model}"),
        _post(svc, "/v1/chat/completions", {"model": model, "messages": COW}),
    ):
        assert (resp.status, resp.error["code"]) == (404, "model_not_found")
    assert model not in {m.id for m in client(svc).models.list().data}
    assert svc.delete(f"/v1/models/{model}").status == 404
    # The job itself stays, succeeded, with its records.
    assert svc.get(f"/v1/tunings.get/{jobs['q']['id']}").json()["status"] == "succeeded"


def test_deleting_a_job_drops_its_adapter_from_the_worker(served) -> None:
    svc, jobs = served
    model = openai_id(svc, jobs["b"])
    assert chat(svc, model)
    assert any(jobs["b"]["id"] in m["adapters"] for m in _worker_stats(svc)["loaded"])
    assert svc.delete(f"/v1/tunings.delete/{jobs['b']['id']}").status == 200
    assert not any(jobs["b"]["id"] in m["adapters"] for m in _worker_stats(svc)["loaded"])
    resp = _post(svc, "/v1/chat/completions", {"model": model, "messages": COW})
    assert (resp.status, resp.error["code"]) == (404, "model_not_found")

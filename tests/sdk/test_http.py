"""Retries, backoff, Retry-After, idempotency keys and timeouts, against a stub HTTP server."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from tests.sdk.objects import health_body
from tests.sdk.stub import Handler, Recorded, StubServer, delay, drop, error, job_body, reply
from tuning_sdk import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    QuotaExceededError,
    RateLimitError,
    TuningClient,
    UnprocessableEntityError,
    _http,
)


def test_503_with_retry_after_then_success(
    stub: StubServer, client: TuningClient, sleeps: list[float]
) -> None:
    stub.route(
        "GET",
        "/v1/tunings.get/ftjob-1",
        reply(503, {"error": {"code": "unavailable", "message": "busy"}}, {"Retry-After": "3"}),
        reply(200, job_body(status="running")),
    )
    job = client.tunings.get("ftjob-1")
    assert job.status == "running"
    assert len(stub.calls("GET", "/v1/tunings.get/")) == 2
    assert sleeps == [3.0]


def test_retry_after_is_capped_and_http_dates_understood(sleeps: list[float]) -> None:
    assert _http.retry_delay(0, {"Retry-After": "86400"}) == _http.MAX_RETRY_AFTER
    assert _http.retry_delay(0, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert _http.parse_retry_after({"Retry-After": "soon"}) is None


def test_backoff_is_exponential_with_jitter() -> None:
    for attempt in range(6):
        base = min(_http.INITIAL_RETRY_DELAY * 2**attempt, _http.MAX_RETRY_DELAY)
        delays = {_http.retry_delay(attempt) for _ in range(50)}
        assert all(0.75 * base <= d <= base for d in delays)
        assert len(delays) > 1  # jittered, not a constant


def test_dropped_create_is_retried_with_the_same_idempotency_key(
    stub: StubServer, client: TuningClient, sleeps: list[float]
) -> None:
    jobs: dict[str, dict[str, Any]] = {}

    def create(h: Handler, req: Recorded) -> None:
        # Idempotent like the real service: one job per key.
        key = req.header("Idempotency-Key") or ""
        job = jobs.setdefault(key, job_body(f"ftjob-{len(jobs) + 1}"))
        h.send_json(200, job)

    def create_then_lose_answer(h: Handler, req: Recorded) -> None:
        key = req.header("Idempotency-Key") or ""
        jobs.setdefault(key, job_body(f"ftjob-{len(jobs) + 1}"))  # the job was made...
        drop()(h, req)  # ... but the answer never arrives

    stub.route("POST", "/v1/tunings.create", create_then_lose_answer, create)
    job = client.tunings.create(model="tiny-llama", training_file="data/train.jsonl")
    calls = stub.calls("POST", "/v1/tunings.create")
    assert len(calls) == 2
    keys = {c.header("Idempotency-Key") for c in calls}
    assert len(keys) == 1 and None not in keys
    assert len(jobs) == 1 and job.id == "ftjob-1"
    assert calls[0].json() == calls[1].json() == {"model": "tiny-llama", "training_file": "data/train.jsonl"}

    # A second create is a different operation: a new key.
    client.tunings.create(model="tiny-llama", training_file="data/train.jsonl")
    assert len(jobs) == 2
    # A caller-chosen key is sent as is.
    client.tunings.create(model="tiny-llama", training_file="data/train.jsonl", idempotency_key="mine-1")
    assert stub.calls("POST", "/v1/tunings.create")[-1].header("Idempotency-Key") == "mine-1"


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_json", BadRequestError),
        (401, "invalid_api_key", AuthenticationError),
        (404, "job_not_found", NotFoundError),
        (422, "invalid_hyperparameter", UnprocessableEntityError),
    ],
)
def test_client_errors_are_not_retried(
    stub: StubServer, client: TuningClient, sleeps: list[float], status: int, code: str, cls: type
) -> None:
    stub.route("POST", "/v1/tunings.create", error(status, code, "nope", param="model"))
    with pytest.raises(cls) as info:
        client.tunings.create(model="m", training_file="data/train.jsonl")
    assert len(stub.calls("POST", "/v1/tunings.create")) == 1
    assert sleeps == []
    assert (info.value.status_code, info.value.code, info.value.param) == (status, code, "model")
    assert info.value.request_id == f"req-{code}"


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_max_retries_is_honoured(stub: StubServer, sleeps: list[float], max_retries: int) -> None:
    stub.route("GET", "/v1/tunings.get/ftjob-1", error(503, "internal_error"))
    c = TuningClient(api_key="k", base_url=stub.base_url, max_retries=max_retries)
    with pytest.raises(InternalServerError) as info:
        c.tunings.get("ftjob-1")
    assert len(stub.calls("GET", "/v1/tunings.get/")) == max_retries + 1
    assert len(sleeps) == max_retries
    assert info.value.status_code == 503


def test_429_and_408_are_retried(stub: StubServer, client: TuningClient, sleeps: list[float]) -> None:
    stub.route(
        "GET",
        "/v1/tunings.get/ftjob-1",
        error(408, "timeout"),
        reply(429, {"error": {"code": "rate_limited", "message": "slow down"}}, {"Retry-After": "1"}),
        reply(200, job_body()),
    )
    assert client.tunings.get("ftjob-1").id == "ftjob-1"
    assert len(sleeps) == 2 and sleeps[1] == 1.0


def test_rate_limit_error_after_retries(stub: StubServer, client: TuningClient, sleeps: list[float]) -> None:
    stub.route("GET", "/v1/tunings.get/ftjob-1", error(429, "rate_limited"))
    with pytest.raises(RateLimitError) as info:
        client.tunings.get("ftjob-1")
    assert type(info.value) is RateLimitError
    assert len(stub.calls("GET", "/v1/tunings.get/")) == 3


def test_a_quota_exceeded_429_is_raised_at_once(
    stub: StubServer, client: TuningClient, sleeps: list[float]
) -> None:
    """A key over its quota stays over it for hours: the 429 `quota_exceeded` is not retried (not even with
    a Retry-After), while a rate limit's 429 on the same route still is."""
    quota = error(429, "quota_exceeded", "over max_queued_jobs", param="max_queued_jobs")
    stub.route("POST", "/v1/tunings.create", quota)
    with pytest.raises(QuotaExceededError) as info:
        client.tunings.create("tiny-llama", "data/train.jsonl")
    assert len(stub.calls("POST", "/v1/tunings.create")) == 1 and sleeps == []
    assert (info.value.status_code, info.value.code, info.value.param) == (
        429,
        "quota_exceeded",
        "max_queued_jobs",
    )
    assert isinstance(info.value, RateLimitError) and info.value.request_id == "req-quota_exceeded"

    body = {"error": {"code": "quota_exceeded", "message": "over", "param": None, "type": "x"}}
    stub.route("POST", "/v1/tunings.create", reply(429, body, {"Retry-After": "1"}))
    with pytest.raises(QuotaExceededError):
        client.tunings.create("tiny-llama", "data/train.jsonl")
    assert len(stub.calls("POST", "/v1/tunings.create")) == 2 and sleeps == []

    limited = reply(429, {"error": {"code": "rate_limited", "message": "slow down"}}, {"Retry-After": "1"})
    stub.route("POST", "/v1/tunings.create", limited, reply(200, job_body()))
    assert client.tunings.create("tiny-llama", "data/train.jsonl").id == "ftjob-1"
    assert len(stub.calls("POST", "/v1/tunings.create")) == 4 and sleeps == [1.0]


def test_connection_refused_is_retried_then_raised(sleeps: list[float]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nobody listens there
    c = TuningClient(api_key="k", base_url=f"http://127.0.0.1:{port}", max_retries=2)
    with pytest.raises(APIConnectionError) as info:
        c.health_check()
    assert not isinstance(info.value, APITimeoutError)  # refused is not a timeout
    assert len(sleeps) == 2


def test_read_timeout_raises_api_timeout_error(stub: StubServer, sleeps: list[float]) -> None:
    stub.route("GET", "/health", delay(1.0, reply(200, health_body())))
    c = TuningClient(api_key="k", base_url=stub.base_url, timeout=0.2, max_retries=1)
    with pytest.raises(APITimeoutError):
        c.health_check()
    assert len(stub.calls("GET", "/health")) == 2  # a timeout is retried too
    assert len(sleeps) == 1


def test_real_sleep_honours_retry_after(stub: StubServer, client: TuningClient) -> None:
    import time

    stub.route("GET", "/health", reply(503, None, {"Retry-After": "1"}), reply(200, health_body()))
    t0 = time.monotonic()
    assert client.health_check()["status"] == "healthy"
    assert time.monotonic() - t0 >= 1.0


def test_requests_carry_key_user_agent_and_json(stub: StubServer, client: TuningClient) -> None:
    stub.route("POST", "/v1/tunings.cancel/", reply(200, job_body(status="cancelled")))
    client.tunings.cancel("ftjob-1")
    (req,) = stub.calls("POST", "/v1/tunings.cancel/")
    assert req.header("Authorization") == "Bearer sk-test"
    assert (req.header("User-Agent") or "").startswith("tuning-sdk/")
    assert req.header("Idempotency-Key")  # every POST has one


def test_concurrent_requests_share_the_pool(stub: StubServer, client: TuningClient) -> None:
    stub.route("GET", "/v1/tunings.get/", reply(200, job_body()))
    results: list[str] = []

    def worker() -> None:
        results.append(client.tunings.get("ftjob-1").id)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ftjob-1"] * 8

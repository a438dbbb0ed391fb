"""client.usage (GET /v1/usage) against the stub: the request, the typed answer, an older service."""

from __future__ import annotations

import pytest

from tests.sdk.objects import key_usage_body
from tests.sdk.stub import StubServer, error, reply
from tuning_sdk import KeyLimits, KeyUsage, NotFoundError, TuningClient


def test_retrieve_reads_the_usage_and_limits(stub: StubServer, client: TuningClient) -> None:
    wire = key_usage_body(
        running_jobs=1,
        queued_jobs=2,
        gpu_hours=3.25,
        window_days=7.0,
        limits={"max_running_jobs": 2, "max_gpu_hours": 100.0},
    )
    stub.route("GET", "/v1/usage", reply(200, wire))
    usage = client.usage.retrieve()
    assert isinstance(usage, KeyUsage) and usage.object == "usage"
    assert (usage.key_id, usage.running_jobs, usage.queued_jobs) == ("key_0123456789abcdef", 1, 2)
    assert (usage.gpu_hours, usage.window_days) == (3.25, 7.0)
    assert usage.limits == KeyLimits(max_running_jobs=2, max_queued_jobs=None, max_gpu_hours=100.0)
    assert usage.to_dict() == wire
    (req,) = stub.calls("GET", "/v1/usage")
    assert req.query == {} and req.header("Authorization") == "Bearer sk-test"
    assert client.usage is client.usage  # made once per client


def test_numbers_decode_to_their_types(stub: StubServer, client: TuningClient) -> None:
    """A whole number of GPU hours or days is still a float; a limit of 0 is a limit, not "none"."""
    stub.route(
        "GET",
        "/v1/usage",
        reply(200, key_usage_body(gpu_hours=2, window_days=30, limits={"max_queued_jobs": 0})),
    )
    usage = client.usage.retrieve()
    assert type(usage.gpu_hours) is float and type(usage.window_days) is float
    assert usage.limits.max_queued_jobs == 0 and usage.limits.max_running_jobs is None


def test_an_odd_or_older_answer_does_not_raise(stub: StubServer, client: TuningClient) -> None:
    # Off the contract on purpose: missing fields take neutral values, unknown ones are kept in `raw`.
    stub.route(
        "GET", "/v1/usage", reply(200, {"object": "usage", "future": 1, "limits": None}, conform=False)
    )
    usage = client.usage.retrieve()
    assert (usage.key_id, usage.running_jobs, usage.gpu_hours, usage.limits) == ("", 0, 0.0, KeyLimits())
    assert usage.raw["future"] == 1
    # A service from before usage answers 404 like any unknown route.
    stub.route("GET", "/v1/usage", error(404, "not_found", "Not Found"))
    with pytest.raises(NotFoundError):
        client.usage.retrieve()

"""tuning_sdk.webhooks: signature verification (valid, tampered, old, wrong secret, malformed headers, secret
rotation) and the create keywords that ask for webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from tests.sdk.stub import StubServer, job_body, reply
from tuning_sdk import TuningClient, TuningError, WebhookSignatureError
from tuning_sdk.webhooks import construct_event, verify_signature

SECRET = "whsec_test_secret"
BODY = json.dumps(
    {"id": "evt_1", "object": "event", "type": "job.succeeded", "data": {"id": "ftjob-1"}}
).encode()


def header(body: bytes = BODY, secret: str = SECRET, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def test_a_valid_signature_returns_the_event() -> None:
    event = verify_signature(BODY, header(), SECRET)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == "ftjob-1"
    assert construct_event(BODY.decode(), header(), SECRET) == event  # str bodies too


def test_tampered_body_is_refused() -> None:
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(BODY.replace(b"succeeded", b"failed"), header(), SECRET)


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(BODY, header(secret="whsec_other"), SECRET)


def test_old_or_future_timestamps_are_refused() -> None:
    old = header(t=int(time.time()) - 301)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        verify_signature(BODY, old, SECRET)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        verify_signature(BODY, header(t=int(time.time()) + 301), SECRET)
    assert verify_signature(BODY, old, SECRET, tolerance=600)["id"] == "evt_1"
    assert verify_signature(BODY, old, SECRET, tolerance=None)["id"] == "evt_1"


def test_the_timestamp_is_signed_too() -> None:
    t = int(time.time())
    sig = header(t=t - 1000).split(",v1=")[1]
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(BODY, f"t={t},v1={sig}", SECRET)  # a fresh t on an old signature


@pytest.mark.parametrize("bad", [None, "", "v1=abc", "t=123", "t=soon,v1=abc", "garbage"])
def test_malformed_headers_are_refused_clearly(bad: str | None) -> None:
    with pytest.raises(WebhookSignatureError) as info:
        verify_signature(BODY, bad, SECRET)
    assert "Tuning-Signature" in str(info.value) or "signed" in str(info.value)
    assert isinstance(info.value, TuningError)


def test_any_of_several_signatures_may_match() -> None:
    # During a secret rotation a sender may sign with both secrets.
    good = header().split(",v1=")[1]
    assert verify_signature(BODY, f"t={int(time.time())},v1=deadbeef,v1={good}", SECRET)["id"] == "evt_1"


def test_a_signed_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(WebhookSignatureError, match="not a JSON object"):
        verify_signature(b"[1]", header(b"[1]"), SECRET)


def test_create_sends_the_webhook_fields(stub: StubServer, client: TuningClient) -> None:
    stub.route("POST", "/v1/tunings.create", reply(200, job_body()))
    client.tunings.create(
        "tiny-llama",
        "data/train.jsonl",
        webhook_url="https://hooks.example.com/tuning",
        webhook_events=("job.succeeded", "job.checkpoint"),
    )
    (req,) = stub.calls("POST", "/v1/tunings.create")
    body = req.json()
    assert body["webhook_url"] == "https://hooks.example.com/tuning"
    assert body["webhook_events"] == ["job.succeeded", "job.checkpoint"]
    client.tunings.create("tiny-llama", "data/train.jsonl")
    assert "webhook_url" not in stub.calls("POST", "/v1/tunings.create")[1].json()

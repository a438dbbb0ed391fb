"""Webhooks through a real server running the fake trainer, against a local receiver (an http.server on
127.0.0.1, allowed here by TUNING_WEBHOOK_ALLOW_NETWORKS): signed deliveries on success, failure and
checkpoints, retry after a 500, no retry after a permanent 4xx, every attempt a job event, the key's default
webhook, and refusal of private addresses when they are not allowed."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.webhook_receiver import Receiver
from tests.support.server import DEV_KEY, ServiceEnv, ServiceProcess
from tuning_sdk.webhooks import WebhookSignatureError, verify_signature

FAKE_TRAINER = Path(__file__).resolve().parent.parent / "fake_trainer.py"
DEV_KEY_ID = "key_" + hashlib.sha256(DEV_KEY.encode()).hexdigest()[:16]
SECRET_RE = re.compile(r"Webhook signing secret: (whsec_[A-Za-z0-9_\-]+)")


@pytest.fixture(scope="module")
def svc(light_service_env: ServiceEnv) -> Iterator[ServiceProcess]:
    s = light_service_env.start(
        "webhooks",
        extra_env={
            "TUNING_TRAINER_COMMAND": json.dumps([sys.executable, str(FAKE_TRAINER)]),
            "TUNING_CANCEL_GRACE_SECONDS": "2",
            "TUNING_MAX_CONCURRENT_JOBS": "2",
            "TUNING_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
            "TUNING_WEBHOOK_BACKOFF": "0.2",
            "TUNING_WEBHOOK_TIMEOUT": "5",
        },
    )
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def secret(svc: ServiceProcess) -> str:
    """The development key's signing secret (environment keys get one with `keys set-webhook`)."""
    out = svc.cli("keys", "set-webhook", DEV_KEY_ID)
    m = SECRET_RE.search(out.stderr)
    assert m, out.stderr
    return m.group(1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def webhook_records(svc: ServiceProcess, job_id: str, n: int, key: str = DEV_KEY) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        r = svc.get(f"/v1/tunings.events/{job_id}?limit=1000", key=key)
        assert r.status == 200, r.text
        records = [e for e in r.json()["data"] if e["type"] == "webhook"]
        if len(records) >= n:
            return records
        time.sleep(0.05)
    raise AssertionError(f"expected {n} webhook records, got {records}")


def test_signed_delivery_when_a_job_succeeds(svc: ServiceProcess, secret: str, receiver: Receiver) -> None:
    job = svc.create_job(model="fake:complete?steps=2", webhook_url=receiver.url)
    assert job["webhook_url"] == receiver.url
    assert job["webhook_events"] == ["job.succeeded", "job.failed", "job.cancelled"]
    final = svc.wait_for(job["id"], "succeeded")
    [got] = receiver.wait(1)
    assert got.path == "/hooks/tuning?src=test"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["tuning-event"] == "job.succeeded"
    event = verify_signature(got.body, got.headers["tuning-signature"], secret)
    assert event["type"] == "job.succeeded" and event["object"] == "event"
    assert event["id"] == got.headers["tuning-delivery"] and event["id"].startswith("evt_")
    # The job object, as GET returns it at that moment.
    assert event["data"]["id"] == job["id"] and event["data"]["status"] == "succeeded"
    assert event["data"]["fine_tuned_model"] == final["fine_tuned_model"]
    assert set(event["data"]) == set(final)
    # A tampered body or an old signature is refused by the SDK helper.
    with pytest.raises(WebhookSignatureError):
        verify_signature(got.body.replace(b"succeeded", b"failed"), got.headers["tuning-signature"], secret)
    with pytest.raises(WebhookSignatureError):
        verify_signature(got.body, got.headers["tuning-signature"], secret, now=time.time() + 3600)
    with pytest.raises(WebhookSignatureError):
        verify_signature(got.body, got.headers["tuning-signature"], "whsec_wrong")
    # The attempt is a job event.
    [rec] = webhook_records(svc, job["id"], 1)
    assert rec["outcome"] == "delivered" and rec["status_code"] == 200 and rec["attempt"] == 1
    assert rec["event"] == "job.succeeded" and rec["delivery_id"] == event["id"]
    time.sleep(0.5)
    assert len(receiver.received) == 1  # delivered once
    # The outbox shows in /metrics.
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(svc.get("/metrics", key=None).text)}
    outbox = {s.labels["status"]: s.value for s in families["tuning_webhook_deliveries"].samples}
    assert outbox["delivered"] >= 1


def test_failed_job_is_retried_after_a_500(svc: ServiceProcess, secret: str, receiver: Receiver) -> None:
    receiver.statuses = [500]
    job = svc.create_job(model="fake:fail", webhook_url=receiver.url)
    svc.wait_for(job["id"], "failed")
    first, second = receiver.wait(2)
    assert first.body == second.body  # the same event, signed afresh
    assert first.headers["tuning-attempt"] == "1" and second.headers["tuning-attempt"] == "2"
    for got in (first, second):
        event = verify_signature(got.body, got.headers["tuning-signature"], secret)
        assert event["type"] == "job.failed"
        assert event["data"]["error"]["code"] == "invalid_data"
    assert second.at - first.at >= 0.09  # backoff 0.2 s with jitter (50-100 %)
    records = webhook_records(svc, job["id"], 2)
    assert [r["outcome"] for r in records] == ["retrying", "delivered"]
    assert records[0]["status_code"] == 500 and records[0]["error"] == "HTTP 500"
    assert records[0]["next_attempt_at"] is not None


def test_permanent_client_error_is_not_retried(svc: ServiceProcess, secret: str, receiver: Receiver) -> None:
    receiver.statuses = [410]
    job = svc.create_job(model="fake:complete?steps=1", webhook_url=receiver.url)
    svc.wait_for(job["id"], "succeeded")
    [rec] = webhook_records(svc, job["id"], 1)
    assert rec["outcome"] == "failed" and rec["status_code"] == 410
    time.sleep(1.0)
    assert len(receiver.received) == 1


def test_checkpoint_events_when_asked(svc: ServiceProcess, secret: str, receiver: Receiver) -> None:
    job = svc.create_job(
        model="fake:complete?steps=400&delay=0.02",
        webhook_url=receiver.url,
        webhook_events=["job.checkpoint", "job.cancelled"],
    )
    assert job["webhook_events"] == ["job.cancelled", "job.checkpoint"]
    # "running" is set when the job is claimed, before the trainer process exists; wait until the trainer
    # has reported a step (its SIGTERM handler is installed before its `started` record), or a SIGTERM on a
    # loaded machine can land before the handler and the trainer dies without a checkpoint.
    deadline = time.monotonic() + 60
    while (svc.get(f"/v1/tunings.get/{job['id']}").json()["metrics"] or {}).get("current_step") in (None, 0):
        assert time.monotonic() < deadline, "the fake trainer never reported a step"
        time.sleep(0.05)
    svc.post(f"/v1/tunings.cancel/{job['id']}")  # the fake trainer checkpoints on SIGTERM
    svc.wait_for(job["id"], "cancelled")
    received = receiver.wait(2)
    events = [verify_signature(g.body, g.headers["tuning-signature"], secret) for g in received]
    assert sorted(e["type"] for e in events) == ["job.cancelled", "job.checkpoint"]
    checkpoint = next(e for e in events if e["type"] == "job.checkpoint")
    step = checkpoint["checkpoint"]["step"]
    assert isinstance(step, int)
    assert checkpoint["checkpoint"]["path"] == f"checkpoints/checkpoint-{step}"
    assert checkpoint["data"]["id"] == job["id"]


def test_key_default_webhook(svc: ServiceProcess, receiver: Receiver) -> None:
    created = svc.cli("keys", "create", "--name", "hooked", "--webhook-url", receiver.url)
    key = created.stdout.strip()
    assert key and "\n" not in key  # stdout is still the key alone
    key_secret = SECRET_RE.search(created.stderr)
    assert key_secret, created.stderr
    listing = svc.cli("keys", "list", "--json").stdout
    assert key_secret.group(1) not in listing
    [hooked] = [k for k in json.loads(listing) if k["name"] == "hooked"]
    assert hooked["webhook_url"] == receiver.url and hooked["has_webhook_secret"] is True
    assert receiver.url in svc.cli("keys", "list").stdout
    job = svc.create_job(key=key, model="fake:complete?steps=1")
    assert "webhook_url" not in job  # the key's default is not the job's own
    svc.wait_for(job["id"], "succeeded", key=key)
    [got] = receiver.wait(1)
    event = verify_signature(got.body, got.headers["tuning-signature"], key_secret.group(1))
    assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
    # Rotating the secret prints a new one; for a day deliveries carry both signatures, so a receiver
    # still on the old secret and one already on the new both accept them.
    rotated = svc.cli("keys", "set-webhook", "hooked", "--rotate-secret")
    new = SECRET_RE.search(rotated.stderr)
    assert new and new.group(1) != key_secret.group(1)
    job2 = svc.create_job(key=key, model="fake:complete?steps=1")
    svc.wait_for(job2["id"], "succeeded", key=key)
    second = receiver.wait(2)[1]
    assert second.headers["tuning-signature"].count("v1=") == 2
    for secret in (key_secret.group(1), new.group(1)):
        event = verify_signature(second.body, second.headers["tuning-signature"], secret)
        assert event["data"]["id"] == job2["id"]
    # Clearing the URL stops deliveries.
    svc.cli("keys", "set-webhook", "hooked", "--clear")
    job3 = svc.create_job(key=key, model="fake:complete?steps=1")
    svc.wait_for(job3["id"], "succeeded", key=key)
    time.sleep(1.0)
    assert len(receiver.received) == 2


def test_set_webhook_refuses_unknown_keys_and_bad_urls(svc: ServiceProcess) -> None:
    unknown = svc.cli("keys", "set-webhook", "nobody", check=False)
    assert unknown.returncode == 1 and "No single active key" in unknown.stderr
    bad = svc.cli("keys", "set-webhook", DEV_KEY_ID, "--url", "ftp://example.com/x", check=False)
    assert bad.returncode != 0 and "http" in bad.stderr


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_addresses_are_refused_when_not_allowed(api_service: ServiceProcess, url: str) -> None:
    r = api_service.post(
        "/v1/tunings.create", {"model": "m", "training_file": "data/train.jsonl", "webhook_url": url}
    )
    # This server's policy refuses the address: 403, not a 422 (the URL itself is well-formed).
    assert r.status == 403 and r.error["code"] == "webhook_url_not_allowed", r.text
    assert r.error["param"] == "webhook_url"
    assert "TUNING_WEBHOOK_ALLOW_NETWORKS" in r.error["message"]


@pytest.mark.parametrize(
    ("extra", "status", "param"),
    [
        ({"webhook_url": "ftp://example.com/x"}, 422, "webhook_url"),
        ({"webhook_url": "https://user:pw@93.184.216.34/x"}, 422, "webhook_url"),
        ({"webhook_url": 42}, 400, "webhook_url"),
        (
            {"webhook_url": "https://93.184.216.34/x", "webhook_events": ["job.exploded"]},
            422,
            "webhook_events.0",
        ),
        ({"webhook_url": "https://93.184.216.34/x", "webhook_events": "job.failed"}, 400, "webhook_events"),
        ({"webhook_events": ["job.failed"]}, 422, "webhook_events"),
        # A public address is fine, but this key has no signing secret yet (a state of the key: 409).
        ({"webhook_url": "https://93.184.216.34/x"}, 409, "webhook_url"),
    ],
)
def test_bad_webhook_fields(
    api_service: ServiceProcess, extra: dict[str, Any], status: int, param: str
) -> None:
    r = api_service.post("/v1/tunings.create", {"model": "m", "training_file": "data/train.jsonl", **extra})
    assert r.status == status, r.text
    assert r.error["param"] == param


def test_missing_secret_says_how_to_get_one(api_service: ServiceProcess) -> None:
    r = api_service.post(
        "/v1/tunings.create",
        {"model": "m", "training_file": "data/train.jsonl", "webhook_url": "https://93.184.216.34/x"},
    )
    assert r.status == 409
    assert r.error["code"] == "webhook_secret_missing"
    assert "keys set-webhook" in r.error["message"]


def test_a_pending_retry_survives_a_service_restart(
    light_service_env: ServiceEnv, receiver: Receiver
) -> None:
    s = light_service_env.start(
        "webhooks-restart",
        extra_env={
            "TUNING_TRAINER_COMMAND": json.dumps([sys.executable, str(FAKE_TRAINER)]),
            "TUNING_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
            "TUNING_WEBHOOK_BACKOFF": "6",  # the retry is due 3-6 s later: after the restart
        },
    )
    try:
        out = s.cli("keys", "set-webhook", DEV_KEY_ID)
        m = SECRET_RE.search(out.stderr)
        assert m, out.stderr
        receiver.statuses = [503]
        job = s.create_job(model="fake:complete?steps=1", webhook_url=receiver.url)
        s.wait_for(job["id"], "succeeded")
        [first] = webhook_records(s, job["id"], 1)
        assert first["outcome"] == "retrying"
        stopped_at = time.time()
        s.restart()  # the event waits in the database, not in the stopped process
        records = webhook_records(s, job["id"], 2)
        assert [r["outcome"] for r in records] == ["retrying", "delivered"]
        assert records[1]["time"] > stopped_at  # sent by the new process
        got = receiver.wait(2)
        assert verify_signature(got[1].body, got[1].headers["tuning-signature"], m.group(1))["type"] == (
            "job.succeeded"
        )
    finally:
        s.shutdown()

"""GET /metrics through a real server running the fake trainer (tests/service/fake_trainer.py): the documented
series exist, move when jobs run, label requests by route template, and the optional key is enforced."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ServiceEnv, ServiceProcess

FAKE_TRAINER = Path(__file__).resolve().parent.parent / "fake_trainer.py"
REPO = Path(__file__).resolve().parents[3]


def fake_env(**extra: str) -> dict[str, str]:
    return {
        "TUNING_TRAINER_COMMAND": json.dumps([sys.executable, str(FAKE_TRAINER)]),
        "TUNING_CANCEL_GRACE_SECONDS": "2",
        **extra,
    }


@pytest.fixture(scope="module")
def svc(light_service_env: ServiceEnv) -> Iterator[ServiceProcess]:
    s = light_service_env.start("metrics", extra_env=fake_env(TUNING_MAX_CONCURRENT_JOBS="1"))
    yield s
    s.shutdown()


def scrape(svc: ServiceProcess, **kw: Any) -> dict[str, Any]:
    r = svc.get("/metrics", key=None, **kw)
    assert r.status == 200, (r.status, r.text)
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(families: dict[str, Any], sample: str, **labels: str) -> float | None:
    family = families[re.sub(r"_(total|bucket|count|sum)$", "", sample)]
    for s in family.samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def documented_series() -> dict[str, str]:
    """name -> type from the table in docs/service.md, section "Metrics"."""
    text = (REPO / "docs" / "service.md").read_text(encoding="utf-8")
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(tuning_[a-z_]+)` \| (counter|gauge|histogram) \|", section, re.M))


def test_documented_series_exist_with_their_types(svc: ServiceProcess) -> None:
    svc.get("/health")  # at least one request counted
    documented = documented_series()
    assert len(documented) >= 12, documented
    families = scrape(svc)
    for name, kind in documented.items():
        assert name in families, f"{name} is documented but not served"
        assert families[name].type == kind, (name, families[name].type)
    undocumented = {n for n in families if n.startswith("tuning_")} - set(documented)
    assert not undocumented, f"served but not documented in docs/service.md: {undocumented}"


def test_job_series_move_while_jobs_run(svc: ServiceProcess) -> None:
    before = scrape(svc)
    succeeded_before = value(before, "tuning_jobs", status="succeeded") or 0
    durations_before = value(before, "tuning_job_duration_seconds_count", status="succeeded") or 0
    # One slot (TUNING_MAX_CONCURRENT_JOBS=1): the first job runs, the second waits in the queue.
    running = svc.create_job(model="fake:complete?steps=400&delay=0.02")
    queued = svc.create_job(model="fake:complete?steps=2")
    deadline = time.monotonic() + 30
    while True:
        families = scrape(svc)
        loss = value(families, "tuning_job_train_loss", job_id=running["id"])
        if loss is not None:
            break
        assert time.monotonic() < deadline, "the running job's loss never appeared"
        time.sleep(0.1)
    assert 0 < loss <= 2.0
    assert value(families, "tuning_job_tokens_per_second", job_id=running["id"]) == 1000.0
    assert value(families, "tuning_jobs", status="running") == 1
    assert value(families, "tuning_jobs_running") == 1
    assert value(families, "tuning_jobs", status="queued") == 1
    assert value(families, "tuning_queue_length") == 1
    assert value(families, "tuning_gpu_leases_in_use") == 0  # CPU service: nothing leased
    assert value(families, "tuning_job_train_loss", job_id=queued["id"]) is None  # only running jobs

    svc.post(f"/v1/tunings.cancel/{running['id']}")
    svc.wait_for(running["id"], "cancelled")
    svc.wait_for(queued["id"], "succeeded", timeout=60)
    after = scrape(svc)
    assert value(after, "tuning_jobs", status="succeeded") == succeeded_before + 1
    assert value(after, "tuning_jobs", status="cancelled") >= 1
    assert value(after, "tuning_jobs_running") == 0
    assert value(after, "tuning_queue_length") == 0
    # Finished jobs leave the per-job gauges (bounded cardinality) and enter the duration histogram.
    assert value(after, "tuning_job_train_loss", job_id=running["id"]) is None
    assert value(after, "tuning_job_duration_seconds_count", status="succeeded") == durations_before + 1
    assert value(after, "tuning_job_duration_seconds_count", status="cancelled") >= 1
    assert value(after, "tuning_job_duration_seconds_bucket", status="succeeded", le="+Inf") == (
        durations_before + 1
    )
    assert value(after, "tuning_job_duration_seconds_sum", status="succeeded") > 0


def test_requests_are_labelled_by_route_template(svc: ServiceProcess) -> None:
    job = svc.create_job(model="fake:complete?steps=1")
    for _ in range(3):
        assert svc.get(f"/v1/tunings.get/{job['id']}").status == 200
    assert svc.get("/v1/tunings.get/ftjob-000000000000000000000000").status == 404
    assert svc.get(f"/no/such/route/{job['id']}").status == 404
    families = scrape(svc)
    template = "/v1/tunings.get/{job_id}"
    assert value(families, "tuning_http_requests_total", route=template, method="GET", status="200") >= 3
    assert value(families, "tuning_http_requests_total", route=template, method="GET", status="404") >= 1
    assert value(families, "tuning_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    count = value(families, "tuning_http_request_duration_seconds_count", route=template, method="GET")
    assert count is not None and count >= 4
    # Never a raw path (one series per job id would grow without bound).
    labels = {s.labels.get("route") for f in families.values() for s in f.samples}
    assert not any(job["id"] in (route or "") for route in labels)


def test_open_streams_gauge(svc: ServiceProcess) -> None:
    job = svc.create_job(model="fake:complete?steps=400&delay=0.02")
    svc.wait_for(job["id"], "running")
    stream = svc.stream(f"/v1/tunings.logs/{job['id']}?follow=true")
    try:
        assert stream.status == 200
        assert stream.next() is not None
        assert value(scrape(svc), "tuning_sse_streams_open") == 1
    finally:
        stream.close()
        svc.post(f"/v1/tunings.cancel/{job['id']}")
    deadline = time.monotonic() + 10
    while value(scrape(svc), "tuning_sse_streams_open") != 0:
        assert time.monotonic() < deadline, "the closed stream is still counted as open"
        time.sleep(0.1)
    # The stream was counted as a request, but its lifetime is not a latency.
    families = scrape(svc)
    route = "/v1/tunings.logs/{job_id}"
    assert value(families, "tuning_http_requests_total", route=route, method="GET", status="200") >= 1
    assert value(families, "tuning_http_request_duration_seconds_count", route=route, method="GET") is None
    svc.wait_for(job["id"], "cancelled")


def test_metrics_key_is_enforced_when_set(light_service_env: ServiceEnv) -> None:
    s = light_service_env.start(
        "metrics-key", extra_env={"TUNING_METRICS_KEY": "scrape-secret", "TUNING_MAX_CONCURRENT_JOBS": "0"}
    )
    try:
        missing = s.get("/metrics", key=None)
        assert missing.status == 401
        assert missing.error["code"] == "missing_api_key"
        wrong = s.get("/metrics", key="test-key-001")  # an API key is not the metrics key
        assert wrong.status == 401
        assert wrong.error["code"] == "invalid_api_key"
        ok = s.get("/metrics", key="scrape-secret")
        assert ok.status == 200
        assert "tuning_jobs" in {f.name for f in text_string_to_metric_families(ok.text)}
    finally:
        s.shutdown()


def test_metrics_refuses_query_parameters(svc: ServiceProcess) -> None:
    r = svc.get("/metrics?name=x", key=None)
    assert r.status == 400
    assert r.error["param"] == "name"


def test_workers_share_request_counters(light_service_env: ServiceEnv) -> None:
    """With --workers 2 a scrape lands on either worker; both answer with the service's totals (each adds
    its sibling's snapshot, written once a second)."""
    s = light_service_env.start("metrics-workers", workers=2, extra_env={"TUNING_MAX_CONCURRENT_JOBS": "0"})
    try:
        n = 40
        for _ in range(n):
            assert s.get("/v1/tunings.list").status == 200
        time.sleep(2.5)  # every worker has written its snapshot since
        seen = set()
        for _ in range(6):
            families = scrape(s)
            total = value(families, "tuning_http_requests_total", route="/v1/tunings.list", status="200")
            seen.add(total)
            assert total == n, total
        assert (s.data_dir / "metrics").is_dir()
        assert len(list((s.data_dir / "metrics").glob("*.json"))) >= 1
    finally:
        s.shutdown()

"""Idempotency (issue 5, point 11) against a real service that launches (fake) trainers: a replayed create
launches nothing more; a different body is 422; 20 concurrent creates with one key make one job; the same key
under another API key is independent. (Single-request cases: tests/service/api/test_jobs.py.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.reliability.conftest import TERMINAL, launches
from tests.support.server import DEV_KEY, OTHER_KEY, ServiceProcess

BODY = {"model": "fake:complete?steps=3", "training_file": "data/train.jsonl"}


def _create(svc: ServiceProcess, key: str, idem: str, body: dict | None = None):  # type: ignore[no-untyped-def]
    return svc.post("/v1/tunings.create", body or BODY, key=key, headers={"Idempotency-Key": idem})


def test_same_key_same_body_is_one_job_and_one_trainer(fake_service: ServiceProcess) -> None:
    first = _create(fake_service, DEV_KEY, "idem-once")
    job = fake_service.wait_for(first.json()["id"], TERMINAL, timeout=60)
    again = _create(fake_service, DEV_KEY, "idem-once")
    assert again.status == 200 and again.json()["id"] == job["id"]
    assert again.headers["idempotent-replayed"] == "true" and again.json()["status"] == job["status"]
    assert job["status"] == "succeeded" and len(launches(fake_service, job["id"])) == 1


def test_same_key_different_body_is_409(fake_service: ServiceProcess) -> None:
    assert _create(fake_service, DEV_KEY, "idem-body").status == 200
    r = _create(fake_service, DEV_KEY, "idem-body", {**BODY, "seed": 7})
    assert r.status == 409 and r.error["code"] == "idempotency_key_reused"
    assert r.error["param"] == "Idempotency-Key"


def test_20_concurrent_creates_with_one_key_make_one_job(fake_service: ServiceProcess) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: _create(fake_service, DEV_KEY, "idem-race"), range(20)))
    assert {r.status for r in results} == {200}
    ids = {r.json()["id"] for r in results}
    assert len(ids) == 1
    assert [r.headers["idempotent-replayed"] for r in results].count("false") == 1
    job_id = ids.pop()
    fake_service.wait_for(job_id, TERMINAL, timeout=60)
    assert len(launches(fake_service, job_id)) == 1  # one trainer launched
    listed = fake_service.get("/v1/tunings.list?limit=100").json()["data"]
    assert [j["id"] for j in listed].count(job_id) == 1


def test_the_same_key_under_another_api_key_is_independent(fake_service: ServiceProcess) -> None:
    a = _create(fake_service, DEV_KEY, "idem-tenant")
    b = _create(fake_service, OTHER_KEY, "idem-tenant", {**BODY, "seed": 9})  # even with another body
    assert a.status == b.status == 200 and a.json()["id"] != b.json()["id"]
    for job_id, key in ((a.json()["id"], DEV_KEY), (b.json()["id"], OTHER_KEY)):
        assert fake_service.wait_for(job_id, TERMINAL, key=key, timeout=60)["status"] == "succeeded"

"""Tenant isolation (issue 5, point 7), beyond tests/service/api/test_jobs.py (which proves every id route
answers another key's id with the unknown-id 404): list cursors, status filters, idempotency keys and the
log stream never reveal another key's jobs."""

from __future__ import annotations

from tests.support.server import DEV_KEY, OTHER_KEY, ServiceProcess


def test_lists_cursors_and_filters_show_only_the_callers_jobs(api_service: ServiceProcess) -> None:
    mine = [api_service.create_job(key=DEV_KEY)["id"] for _ in range(3)]
    theirs = [api_service.create_job(key=OTHER_KEY)["id"] for _ in range(2)]
    api_service.post(f"/v1/tunings.cancel/{theirs[0]}", key=OTHER_KEY)
    for query in ("", "?status=queued", "?status=cancelled", f"?after={theirs[1]}", f"?after={mine[2]}"):
        listed = api_service.get(f"/v1/tunings.list{query}&limit=100".replace("list&", "list?"), key=DEV_KEY)
        assert listed.status == 200, listed.text
        ids = {j["id"] for j in listed.json()["data"]}
        assert not ids & set(theirs), query
    # Another key's id as a cursor behaves like an unknown cursor: it reveals nothing about that job.
    cursor = api_service.get(f"/v1/tunings.list?after={theirs[1]}", key=DEV_KEY).json()
    unknown = api_service.get("/v1/tunings.list?after=ftjob-000000000000000000000000", key=DEV_KEY).json()
    assert cursor == unknown


def test_idempotency_keys_never_return_another_keys_job(api_service: ServiceProcess) -> None:
    body = {"model": "tiny-llama", "training_file": "data/train.jsonl"}
    a = api_service.post("/v1/tunings.create", body, key=DEV_KEY, headers={"Idempotency-Key": "iso-1"})
    b = api_service.post("/v1/tunings.create", body, key=OTHER_KEY, headers={"Idempotency-Key": "iso-1"})
    assert a.status == b.status == 200
    assert a.json()["id"] != b.json()["id"]
    assert a.headers["idempotent-replayed"] == b.headers["idempotent-replayed"] == "false"


def test_the_log_stream_of_another_keys_job_is_the_unknown_id_404(api_service: ServiceProcess) -> None:
    job = api_service.create_job(key=DEV_KEY)
    stream = api_service.stream(f"/v1/tunings.logs/{job['id']}?follow=true", key=OTHER_KEY)
    try:
        assert stream.status == 404
        assert stream.headers["content-type"].startswith("application/json")
    finally:
        stream.close()
    page = api_service.get(f"/v1/tunings.logs/{job['id']}", key=OTHER_KEY)
    assert page.status == 404 and page.error["code"] == "job_not_found"

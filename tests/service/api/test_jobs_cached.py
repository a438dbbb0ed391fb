"""tunings.get / tunings.list serve finished jobs and unchanged pages from their caches (jobcache.py): the
bytes are those JSONResponse would write, and a resumed, changed or deleted job is never served stale, also
when another process changed it. Over real HTTP with the fake trainer (the caches' own unit tests:
test_jobcache.py).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import OTHER_KEY, ServiceEnv, ServiceProcess
from tuning_service.schema.jobs import TuningJobList

FAKE_TRAINER = Path(__file__).resolve().parent.parent / "fake_trainer.py"


@pytest.fixture(scope="module")
def fake_service(light_service_env: ServiceEnv) -> Any:
    svc = light_service_env.start(
        "routes-jobs", extra_env={"TUNING_TRAINER_COMMAND": json.dumps([sys.executable, str(FAKE_TRAINER)])}
    )
    yield svc
    svc.shutdown()


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _page(svc: ServiceProcess, query: str = "limit=100") -> dict[str, Any]:
    r = svc.get(f"/v1/tunings.list?{query}")
    assert r.status == 200, r.text
    assert r.headers["content-type"] == "application/json"
    page = r.json()
    # Spliced from the jobs' cached bytes, but byte for byte what JSONResponse writes for the one envelope.
    assert r.text == _compact(TuningJobList.body(page["data"], page["has_more"]))
    return dict(page)


def test_cached_jobs_are_served_as_fresh_ones_and_a_resumed_job_is_never_stale(
    fake_service: ServiceProcess,
) -> None:
    svc = fake_service
    done = svc.create_job(model="fake:complete?steps=2", metadata={"name": "döne"})
    crashed = svc.create_job(model="fake:crash?steps=5&save=1")
    svc.wait_for(done["id"], "succeeded")
    failed = svc.wait_for(crashed["id"], "failed")

    first = [svc.get(f"/v1/tunings.get/{j}") for j in (done["id"], crashed["id"])]
    again = [svc.get(f"/v1/tunings.get/{j}") for j in (done["id"], crashed["id"])]  # from the cache
    for a, b in zip(first, again, strict=True):
        assert a.status == b.status == 200
        assert a.text == b.text == _compact(a.json())
    assert again[0].json()["metadata"] == {"name": "döne"}
    listed = {j["id"]: j for j in _page(svc)["data"]}
    assert listed[done["id"]] == again[0].json() and listed[crashed["id"]] == failed

    # Resumed (it left checkpoint-1): the cached `failed` JSON must not be served any more.
    r = svc.post(f"/v1/tunings.resume/{crashed['id']}")
    assert r.status == 200, r.text
    assert svc.get(f"/v1/tunings.get/{crashed['id']}").json()["status"] != "failed"
    assert {j["id"]: j for j in _page(svc)["data"]}[crashed["id"]]["status"] != "failed"
    refailed = svc.wait_for(crashed["id"], "failed")
    assert refailed["finished_at"] >= failed["finished_at"]
    assert {j["id"]: j for j in _page(svc)["data"]}[crashed["id"]] == refailed

    # Deleted: gone from both, although both were cached.
    assert svc.delete(f"/v1/tunings.delete/{done['id']}").status == 200
    r = svc.get(f"/v1/tunings.get/{done['id']}")
    assert r.status == 404 and r.error["code"] == "job_not_found"
    assert done["id"] not in {j["id"] for j in _page(svc)["data"]}


def test_pages_mix_cached_and_live_jobs_and_keep_cursor_and_filters(fake_service: ServiceProcess) -> None:
    svc = fake_service
    ids = [svc.create_job(model="fake:complete?steps=1")["id"] for _ in range(3)]
    for job_id in ids:
        svc.wait_for(job_id, "succeeded")
    live = svc.create_job(model="fake:ignore_term?steps=1000&delay=0.05")  # runs until cancelled
    try:
        svc.wait_for(live["id"], "running")
        cold = _page(svc, "limit=3")
        warm = _page(svc, "limit=3")
        assert [j["id"] for j in cold["data"]] == [live["id"], *ids[::-1][:2]]
        assert cold["data"][1:] == warm["data"][1:] and warm["data"][0]["status"] == "running"
        assert warm["has_more"] and warm["first_id"] == live["id"] and warm["last_id"] == ids[1]
        rest = _page(svc, f"limit=2&after={warm['last_id']}")
        assert rest["data"][0]["id"] == ids[0] and rest["first_id"] == ids[0]
        succeeded = _page(svc, "limit=100&status=succeeded")["data"]
        assert {j["status"] for j in succeeded} == {"succeeded"}
        assert live["id"] not in {j["id"] for j in succeeded}
    finally:
        svc.post(f"/v1/tunings.cancel/{live['id']}")
    empty = _page(svc, "status=pausing")
    assert empty == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}


def test_a_cached_job_changed_or_deleted_by_another_process_is_never_served_stale(
    fake_service: ServiceProcess,
) -> None:
    """Another worker or the CLI writes through its own connection: the next `tunings.get` must see it, though
    this process's cache held the job and its own writer committed nothing."""
    svc = fake_service
    job = svc.create_job(model="fake:complete?steps=2", metadata={"v": "1"})
    done = svc.wait_for(job["id"], "succeeded")
    for _ in range(3):  # cached, then served at an unchanged data_version
        assert svc.get(f"/v1/tunings.get/{job['id']}").json() == done
    other = svc.get(f"/v1/tunings.get/{job['id']}", key=OTHER_KEY)
    assert other.status == 404 and other.error["code"] == "job_not_found"  # cached, but not this key's job
    con = sqlite3.connect(svc.data_dir / "tuning.db", timeout=30)
    try:
        with con:
            con.execute(
                "UPDATE jobs SET status = 'failed', finished_at = finished_at + 1 WHERE id = ?", (job["id"],)
            )
        changed = svc.get(f"/v1/tunings.get/{job['id']}").json()
        assert changed["status"] == "failed" and changed["finished_at"] > done["finished_at"]
        with con:
            con.execute("DELETE FROM jobs WHERE id = ?", (job["id"],))
    finally:
        con.close()
    r = svc.get(f"/v1/tunings.get/{job['id']}")
    assert r.status == 404 and r.error["code"] == "job_not_found"


def test_an_unchanged_page_is_served_again_until_any_process_commits(fake_service: ServiceProcess) -> None:
    svc = fake_service
    job = svc.create_job(model="fake:complete?steps=1")
    svc.wait_for(job["id"], "succeeded")
    first = svc.get("/v1/tunings.list?limit=5")
    assert first.text == svc.get("/v1/tunings.list?limit=5").text  # the same bytes, from the page cache
    assert svc.get("/v1/tunings.list?limit=5", key=OTHER_KEY).json()["data"] == []  # pages are per key
    con = sqlite3.connect(svc.data_dir / "tuning.db", timeout=30)
    try:
        with con:  # another process's commit: this service's writer committed nothing
            con.execute("UPDATE jobs SET status = 'cancelled' WHERE id = ?", (job["id"],))
    finally:
        con.close()
    page = _page(svc, "limit=5")
    assert {j["id"]: j["status"] for j in page["data"]}[job["id"]] == "cancelled"
    assert job["id"] not in {j["id"] for j in _page(svc, "limit=100&status=succeeded")["data"]}

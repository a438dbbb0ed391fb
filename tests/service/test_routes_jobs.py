"""tunings.get / tunings.list serve finished jobs from their cached encoded JSON (routes_jobs.EncodedJobs):
the bytes are those JSONResponse would write, a resumed job is never served stale, a deleted one is gone, and
the cache stays bounded. Over real HTTP with the fake trainer, plus narrow unit tests of the cache itself.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import OTHER_KEY, ServiceEnv, ServiceProcess
from tuning_service.routes_jobs import EncodedJobs

FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"


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
    assert r.text == _compact(page)  # spliced, but byte for byte what JSONResponse writes
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


def test_the_cache_keeps_only_terminal_jobs_read_in_their_stamped_state_and_stays_bounded() -> None:
    cache = EncodedJobs(max_bytes=16 * 100)
    body = b"x" * 100
    cache.put("ftjob-a", "running", None, {"status": "running"}, body, owner="k")
    assert cache.get("ftjob-a", "running", None) is None  # a live job is never kept
    cache.put("ftjob-a", "succeeded", 5.0, {"status": "running"}, body, owner="k")  # read in another state
    assert cache.get("ftjob-a", "succeeded", 5.0) is None
    cache.put("ftjob-a", "succeeded", 5.0, {"status": "succeeded"}, body, owner="k")
    assert cache.get("ftjob-a", "succeeded", 5.0) == body
    assert cache.get("ftjob-a", "succeeded", 6.0) is None  # finished again (after a resume)
    assert cache.get("ftjob-a", "failed", 5.0) is None
    for i in range(40):
        cache.put(f"ftjob-{i}", "failed", 1.0, {"status": "failed"}, body, owner="k")
    assert cache.size <= 16 * 100
    assert cache.get("ftjob-39", "failed", 1.0) == body and cache.get("ftjob-0", "failed", 1.0) is None
    cache.put("ftjob-big", "failed", 1.0, {"status": "failed"}, b"y" * 200, owner="k")  # over max_bytes / 16
    assert cache.get("ftjob-big", "failed", 1.0) is None


def test_an_entry_is_current_only_at_the_data_version_its_stamp_was_read_and_for_its_owner() -> None:
    cache = EncodedJobs()
    body = b"{}"
    cache.put("ftjob-a", "succeeded", 5.0, {"status": "succeeded"}, body, owner="key-1", version=7)
    assert cache.current("ftjob-a", "key-1", 7) == body
    assert cache.current("ftjob-a", "key-1", 8) is None  # something was committed since: read the stamp
    assert cache.current("ftjob-a", "key-2", 7) is None  # another key's request never skips the check
    assert cache.current("ftjob-a", "key-1", None) is None  # no version known: always read the stamp
    assert cache.current("ftjob-b", "key-1", 7) is None
    cache.confirm("ftjob-a", 8)  # the stamp read at version 8 matched
    assert cache.current("ftjob-a", "key-1", 8) == body and cache.current("ftjob-a", "key-1", 7) is None
    cache.put("ftjob-a", "succeeded", 5.0, {"status": "succeeded"}, body, owner="key-1")  # from a list page
    assert cache.current("ftjob-a", "key-1", 8) is None


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

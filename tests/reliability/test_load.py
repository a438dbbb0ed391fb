"""Load (issue 5, point 12): 200 concurrent creates, polling and 50 live log streams against one real
service on loopback. Nothing trains (TUNING_MAX_CONCURRENT_JOBS=0: jobs stay queued), so this measures the
HTTP layer and SQLite under contention: 0 responses >= 500, no "database is locked" anywhere, and every
acknowledged job listed exactly once. The rate limit is off here (it has its own test in test_limits.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.server import DEV_KEY, OTHER_KEY, ServiceEnv, ServiceProcess

CREATES = 200
STREAMS = 50


@pytest.fixture(scope="module")
def svc(light_service_env: ServiceEnv) -> Iterator[ServiceProcess]:
    s = light_service_env.start(
        "load", extra_env={"TUNING_MAX_CONCURRENT_JOBS": "0", "TUNING_RATE_LIMIT_RPS": "0"}
    )
    yield s
    s.shutdown()


def test_200_creates_polling_and_50_streams(svc: ServiceProcess) -> None:
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    acknowledged: dict[str, list[str]] = {DEV_KEY: [], OTHER_KEY: []}

    def note(status: int) -> None:
        with lock:
            statuses[status] += 1

    # 50 jobs to stream from, created first; their streams stay open through the burst.
    stream_jobs = [svc.create_job(key=DEV_KEY)["id"] for _ in range(STREAMS)]
    acknowledged[DEV_KEY] += stream_jobs
    streams = [svc.stream(f"/v1/tunings.logs/{j}?follow=true", timeout=60) for j in stream_jobs]
    for st in streams:
        assert st.status == 200 and st.next() is not None  # `retry:`, then the records so far

    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            note(svc.get("/v1/tunings.list?limit=100").status)
            note(svc.get(f"/v1/tunings.get/{stream_jobs[0]}").status)
            note(svc.get("/health", key=None).status)

    def create(i: int) -> None:
        key = DEV_KEY if i % 2 else OTHER_KEY
        r = svc.post(
            "/v1/tunings.create", {"model": "tiny-llama", "training_file": "data/train.jsonl"}, key=key
        )
        note(r.status)
        if r.status == 200:
            with lock:
                acknowledged[key].append(r.json()["id"])

    t0 = time.monotonic()
    pollers = [threading.Thread(target=poll) for _ in range(4)]
    for p in pollers:
        p.start()
    with ThreadPoolExecutor(max_workers=CREATES) as pool:
        list(pool.map(create, range(CREATES)))
    stop.set()
    for p in pollers:
        p.join(timeout=30)
    took = time.monotonic() - t0

    # The streams are alive: cancelling their jobs makes each one end with the terminal record.
    for j in stream_jobs[:10]:
        assert svc.post(f"/v1/tunings.cancel/{j}").status == 200
    for st in streams[:10]:
        events = st.events()
        assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "cancelled"
    for st in streams:
        st.close()

    print(f"{CREATES} creates + polling + {STREAMS} streams in {took:.1f} s; statuses {dict(statuses)}")
    assert not [s for s in statuses if s >= 500]
    assert statuses[200] >= CREATES
    assert sum(len(v) for v in acknowledged.values()) == CREATES + STREAMS
    for key, ids in acknowledged.items():
        listed: list[str] = []
        after = ""
        while True:
            page = svc.get(f"/v1/tunings.list?limit=100{after}", key=key).json()
            listed += [j["id"] for j in page["data"]]
            if not page["has_more"]:
                break
            after = f"&after={page['last_id']}"
        assert Counter(listed) == Counter(ids)  # every acknowledged job exactly once, nothing else
    log = (svc.data_dir / "tuning_service.log").read_text() + svc.output()
    assert "database is locked" not in log
    assert " 500 " not in log

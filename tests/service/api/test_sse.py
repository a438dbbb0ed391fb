"""The log stream (`GET /v1/tunings.logs/{id}?follow=true`): Server-Sent Events with `id` = record seq,
resumable with Last-Event-ID or after=, heartbeats during silence, ending after the terminal status record;
and no task left behind when a client goes away.

The service here runs no trainers (jobs stay queued), so the records are the service's own status records and
the test decides when the job ends (by cancelling it). Streams of real training are in test_e2e_training.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.server import OTHER_KEY, ServiceEnv, ServiceProcess
from tuning_service.schema.jobs import CreateTuningRequest
from tuning_service.settings import Settings

HEARTBEAT = 0.3


@pytest.fixture(scope="module")
def svc(light_service_env: ServiceEnv):
    s = light_service_env.start(
        "sse", extra_env={"TUNING_MAX_CONCURRENT_JOBS": "0", "TUNING_HEARTBEAT_SECONDS": str(HEARTBEAT)}
    )
    yield s
    s.stop()


def _finished_job(svc: ServiceProcess) -> tuple[str, list[dict]]:
    job = svc.create_job()
    assert svc.post(f"/v1/tunings.cancel/{job['id']}").status == 200
    records = svc.get(f"/v1/tunings.logs/{job['id']}").json()["data"]
    return job["id"], records


def test_follow_replays_every_record_as_an_event_and_ends(svc: ServiceProcess) -> None:
    job_id, records = _finished_job(svc)
    stream = svc.stream(f"/v1/tunings.logs/{job_id}?follow=true")
    try:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache"
        events = stream.events()
    finally:
        stream.close()
    assert [e["id"] for e in events] == [r["seq"] for r in records]
    assert [e["event"] for e in events] == [r["type"] for r in records]
    assert [e["data"] for e in events] == records
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "cancelled"


def test_last_event_id_resumes_after_that_record(svc: ServiceProcess) -> None:
    job_id, records = _finished_job(svc)
    stream = svc.stream(f"/v1/tunings.logs/{job_id}?follow=true", headers={"Last-Event-ID": "1"})
    try:
        events = stream.events()
    finally:
        stream.close()
    assert [e["id"] for e in events] == [r["seq"] for r in records[1:]]


def test_after_resumes_too_and_last_event_id_wins_over_it(svc: ServiceProcess) -> None:
    job_id, records = _finished_job(svc)
    by_after = svc.stream(f"/v1/tunings.logs/{job_id}?follow=true&after=1")
    both = svc.stream(f"/v1/tunings.logs/{job_id}?follow=true&after=99", headers={"Last-Event-ID": "0"})
    try:
        assert [e["id"] for e in by_after.events()] == [r["seq"] for r in records[1:]]
        assert [e["id"] for e in both.events()] == [r["seq"] for r in records]
    finally:
        by_after.close()
        both.close()


def test_resuming_past_the_end_of_a_finished_job_ends_at_once(svc: ServiceProcess) -> None:
    job_id, records = _finished_job(svc)
    started = time.monotonic()
    stream = svc.stream(
        f"/v1/tunings.logs/{job_id}?follow=true", headers={"Last-Event-ID": str(records[-1]["seq"])}
    )
    try:
        assert stream.events() == []
    finally:
        stream.close()
    assert time.monotonic() - started < 5


def test_live_stream_delivers_new_records_with_heartbeats_in_between(svc: ServiceProcess) -> None:
    job = svc.create_job()
    stream = svc.stream(f"/v1/tunings.logs/{job['id']}?follow=true", timeout=20)
    try:
        first = stream.next()
        while first is not None and "retry" in first:
            first = stream.next()
        assert first is not None and first["event"] == "status" and first["data"]["status"] == "queued"
        # Nothing happens to a queued job here: the stream says it is alive with heartbeat comments.
        t0 = time.monotonic()
        beat = stream.next()
        assert beat == {"comment": "heartbeat"}
        assert time.monotonic() - t0 < HEARTBEAT * 10
        assert stream.next() == {"comment": "heartbeat"}

        assert svc.post(f"/v1/tunings.cancel/{job['id']}").status == 200
        rest = stream.events()  # returns only because the server ends the stream
    finally:
        stream.close()
    assert rest[-1]["event"] == "status" and rest[-1]["data"]["status"] == "cancelled"
    assert [e["id"] for e in rest] == list(range(first["id"] + 1, first["id"] + 1 + len(rest)))


@pytest.mark.parametrize("value", ["abc", "-3", "1.5"])
def test_a_malformed_last_event_id_is_400(svc: ServiceProcess, value: str) -> None:
    job = svc.create_job()
    r = svc.get(f"/v1/tunings.logs/{job['id']}?follow=true", headers={"Last-Event-ID": value})
    assert r.status == 400
    assert r.error["param"] == "Last-Event-ID"


def test_another_keys_stream_is_a_plain_json_404(svc: ServiceProcess) -> None:
    job = svc.create_job()
    stream = svc.stream(f"/v1/tunings.logs/{job['id']}?follow=true", key=OTHER_KEY)
    try:
        assert stream.status == 404
        assert stream.headers["content-type"].startswith("application/json")
    finally:
        stream.close()


def test_many_abandoned_streams_leave_the_service_responsive(svc: ServiceProcess) -> None:
    job = svc.create_job()
    streams = [svc.stream(f"/v1/tunings.logs/{job['id']}?follow=true") for _ in range(20)]
    for s in streams:
        assert s.next() is not None
        s.close()
    time.sleep(HEARTBEAT * 2)  # the server notices on its next write at the latest
    t0 = time.monotonic()
    assert svc.get("/health", key=None).status == 200
    assert time.monotonic() - t0 < 2
    assert svc.post(f"/v1/tunings.cancel/{job['id']}").status == 200


def test_a_cancelled_stream_leaves_no_task_behind(tmp_path: Path) -> None:
    """In-process: what Starlette does on a client disconnect (cancel the streaming task) cleans up fully."""
    from tuning_service.api.sse import event_stream
    from tuning_service.engine.facade import JobManager

    files_root = tmp_path / "files"
    (files_root / "data").mkdir(parents=True)
    (files_root / "data" / "train.jsonl").write_text('{"text": "hello"}\n')
    settings = Settings(data_dir=tmp_path / "data", files_root=files_root, models_dir=tmp_path / "models")
    settings.max_concurrent_jobs = 0

    async def scenario() -> tuple[int, list[asyncio.Task]]:
        manager = await JobManager.start(settings)
        loop = asyncio.get_running_loop()
        consumers: set[asyncio.Task] = set()
        spawned: list[asyncio.Task] = []

        def factory(loop: asyncio.AbstractEventLoop, coro, **kw):  # type: ignore[no-untyped-def]
            # Record every task started (directly or not) by a stream consumer, e.g. wait_for's inner task.
            task = asyncio.Task(coro, loop=loop, **kw)
            if asyncio.current_task(loop) in consumers or asyncio.current_task(loop) in spawned:
                spawned.append(task)
            return task

        try:
            request = CreateTuningRequest.model_validate({"model": "m", "training_file": "data/train.jsonl"})
            job, _ = await manager.create(owner="o", request=request, idempotency_key=None)
            records = await manager.records(job["id"], owner="o")
            received: list[bytes] = []

            async def consume() -> None:
                async for chunk in event_stream(records, after=0, heartbeat_seconds=0.05):
                    received.append(chunk)

            loop.set_task_factory(factory)
            consumers.update(asyncio.create_task(consume()) for _ in range(5))
            await asyncio.sleep(0.3)
            for t in consumers:
                t.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
            await asyncio.sleep(0.05)
            assert any(b"heartbeat" in c for c in received)
            return len(spawned), [t for t in [*consumers, *spawned] if not t.done()]
        finally:
            loop.set_task_factory(None)
            await manager.stop()

    spawned, pending = asyncio.run(scenario())
    assert spawned > 0  # the streams did wait (through tasks) for new records
    assert pending == []

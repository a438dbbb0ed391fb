"""Pause and resume: the outcome rules (pure), the manager with the fake trainer (fast supervision cases), the
HTTP error paths (no trainer), and the real trainer end to end: a paused, a cancelled and a failed job each
continue from their checkpoint's step (not 0) to the same total.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import all_events, make_settings, request, run, wait_status
from tests.support.server import OTHER_KEY, ServiceProcess
from tuning_service.engine.facade import JobManager
from tuning_service.engine.outcome import decide_outcome
from tuning_service.errors import APIError
from tuning_service.states import JobStatus

# ---- outcome of a pausing job --------------------------------------------------------------------------


def _row(status: str, terminal: dict[str, Any] | None, cancel: bool = False) -> dict[str, Any]:
    return {
        "id": "ftjob-x",
        "model": "m",
        "status": status,
        "request": {},
        "terminal_record": terminal,
        "cancel_requested_at": 1.0 if cancel else None,
        "adapter_path": None,
    }


@pytest.mark.parametrize(
    ("terminal", "cancel", "expected"),
    [
        ({"type": "interrupted", "step": 5, "checkpoint_path": "/c/checkpoint-5"}, False, JobStatus.PAUSED),
        (None, False, JobStatus.PAUSED),  # killed before a checkpoint: paused all the same (older ones count)
        ({"type": "completed", "adapter_path": "/a"}, False, JobStatus.SUCCEEDED),  # finished first: it wins
        ({"type": "failed", "code": "training_error", "message": "x"}, False, JobStatus.FAILED),
        ({"type": "interrupted", "step": 5, "checkpoint_path": "/c"}, True, JobStatus.CANCELLED),
    ],
)
def test_the_outcome_of_a_pausing_job(
    terminal: dict[str, Any] | None, cancel: bool, expected: JobStatus
) -> None:
    status = "cancelling" if cancel else "pausing"
    got, message, fields = decide_outcome(
        _row(status, terminal, cancel), exit_code=4, killed_by_us=False, log_tail=[]
    )
    assert got is expected
    if expected is JobStatus.PAUSED:
        assert fields["error"] is None and "paused" in message


# ---- the manager with the fake trainer -------------------------------------------------------------------


def test_pause_checkpoints_and_resume_passes_the_checkpoint_to_the_trainer(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "x"}\n')

    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=1))
        owner, _ = await m.create_key("a")
        try:
            job, _ = await m.create(
                owner=owner, request=request("complete?steps=300&delay=0.01"), idempotency_key=None
            )
            job_id = job["id"]
            await wait_status(m, job_id, owner, "running")
            first_start = (await m.store.get_job(job_id) or {})["started_at"]
            await _wait_for_a_step(m, job_id, owner)
            assert (await m.health())["running_jobs"] == 1
            paused = await m.pause(job_id, owner=owner)
            assert paused["status"] in ("pausing", "paused")
            paused = await wait_status(m, job_id, owner, "paused")
            assert paused["finished_at"] is None and paused["error"] is None
            health = await m.health()
            assert (health["paused_jobs"], health["active_jobs"], health["running_jobs"]) == (1, 0, 0)
            ckpts = await m.checkpoints(job_id, owner=owner)
            assert len(ckpts) == 1 and ckpts[0]["step"] > 0
            assert ckpts[0]["path"] == f"checkpoints/checkpoint-{ckpts[0]['step']}"
            with pytest.raises(APIError) as info:
                await m.pause(job_id, owner=owner)
            assert (info.value.status_code, info.value.code) == (409, "job_not_pausable")
            resumed = await m.resume(job_id, owner=owner)
            assert resumed["status"] == "queued"
            done = await wait_status(m, job_id, owner, "succeeded", timeout=60)
            # started_at is the first start, not the resumed run's (the status records show both runs).
            assert (await m.store.get_job(job_id) or {})["started_at"] == first_start
            assert done["started_at"] == int(first_start)
            cfg = json.loads((m.settings.jobs_dir / job_id / "config.json").read_text())
            assert cfg["resume_from"].endswith(f"checkpoints/checkpoint-{ckpts[0]['step']}")
            statuses = [r["status"] for r in await all_events(m, job_id, owner) if r["type"] == "status"]
            assert statuses == ["queued", "running", "pausing", "paused", "queued", "running", "succeeded"]
            # A second launch happened for the same job id.
            assert len((m.settings.jobs_dir / job_id / "launches.txt").read_text().splitlines()) == 2
        finally:
            await m.stop()

    run(body())


def test_a_trainer_that_ignores_the_pause_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "x"}\n')

    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=1, cancel_grace_seconds=0.5))
        owner, _ = await m.create_key("a")
        try:
            job, _ = await m.create(owner=owner, request=request("ignore_term"), idempotency_key=None)
            running = await wait_status(m, job["id"], owner, "running")
            started = time.monotonic()
            await _wait_for_a_step(m, job["id"], owner)  # its SIGTERM disposition is set by then
            await m.pause(job["id"], owner=owner)
            paused = await wait_status(m, job["id"], owner, "paused", timeout=20)
            assert paused["error"] is None and running["id"] == paused["id"]
            assert time.monotonic() - started >= 0.5  # it was SIGKILLed after the grace period
            records = await all_events(m, job["id"], owner)
            assert (
                "without saving a new checkpoint"
                in [r for r in records if r["type"] == "status"][-1]["message"]
            )
        finally:
            await m.stop()

    run(body())


def test_cancel_while_pausing_ends_cancelled(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "x"}\n')

    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=1, cancel_grace_seconds=0.5))
        owner, _ = await m.create_key("a")
        try:
            job, _ = await m.create(owner=owner, request=request("ignore_term"), idempotency_key=None)
            await wait_status(m, job["id"], owner, "running")
            await _wait_for_a_step(m, job["id"], owner)  # its SIGTERM disposition is set by then
            assert (await m.pause(job["id"], owner=owner))["status"] == "pausing"
            assert (await m.cancel(job["id"], owner=owner))["status"] == "cancelling"
            await wait_status(m, job["id"], owner, "cancelled", timeout=20)
        finally:
            await m.stop()

    run(body())


async def _wait_for_a_step(m: JobManager, job_id: str, owner: str) -> None:
    import asyncio

    deadline = time.monotonic() + 15
    while not ((await m.get(job_id, owner=owner))["metrics"] or {}).get("current_step"):
        assert time.monotonic() < deadline, "the fake trainer never reported a step"
        await asyncio.sleep(0.02)


# ---- HTTP error paths (no trainer) -------------------------------------------------------------------------


def test_pause_and_resume_of_a_queued_job(api_service: ServiceProcess) -> None:
    job = api_service.create_job()
    r = api_service.post(f"/v1/tunings.pause/{job['id']}")
    assert r.status == 200 and r.json()["status"] == "paused" and r.json()["queue_position"] is None
    listed = api_service.get("/v1/tunings.list?status=paused&limit=100").json()["data"]
    assert job["id"] in [j["id"] for j in listed]
    r = api_service.post(f"/v1/tunings.pause/{job['id']}")
    assert r.status == 409 and r.error["code"] == "job_not_pausable"
    r = api_service.delete(f"/v1/tunings.delete/{job['id']}")
    assert r.status == 409 and r.error["code"] == "job_not_terminal"  # paused is not terminal
    r = api_service.post(f"/v1/tunings.resume/{job['id']}")
    assert r.status == 200 and r.json()["status"] == "queued" and r.json()["queue_position"] >= 1
    r = api_service.post(f"/v1/tunings.resume/{job['id']}")
    assert r.status == 409 and r.error["code"] == "job_not_resumable"
    # Cancel of a paused job is immediate.
    api_service.post(f"/v1/tunings.pause/{job['id']}")
    r = api_service.post(f"/v1/tunings.cancel/{job['id']}")
    assert r.status == 200 and r.json()["status"] == "cancelled"
    r = api_service.post(f"/v1/tunings.resume/{job['id']}")
    assert r.status == 409 and r.error["code"] == "no_checkpoint"
    r = api_service.post(f"/v1/tunings.pause/{job['id']}")
    assert r.status == 409 and r.error["code"] == "job_not_pausable"
    statuses = [e["status"] for e in api_service.get(f"/v1/tunings.events/{job['id']}").json()["data"]]
    assert statuses == ["queued", "paused", "queued", "paused", "cancelled"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/tunings.pause/{id}"),
        ("POST", "/v1/tunings.resume/{id}"),
        ("GET", "/v1/tunings.events/{id}"),
        ("GET", "/v1/tunings.checkpoints/{id}"),
        ("GET", "/v1/tunings.download/{id}"),
    ],
)
def test_another_keys_job_is_404_on_every_new_route(
    api_service: ServiceProcess, method: str, path: str
) -> None:
    job = api_service.create_job()
    r = api_service.request(method, path.format(id=job["id"]), key=OTHER_KEY)
    assert r.status == 404 and r.error["code"] == "job_not_found"
    assert api_service.get(f"/v1/tunings.get/{job['id']}").json()["status"] == "queued"
    api_service.post(f"/v1/tunings.cancel/{job['id']}")


@pytest.mark.parametrize("query", ["after=-1", "after=x", "limit=0", "limit=1001", "follow=true"])
def test_events_rejects_bad_query_parameters(api_service: ServiceProcess, query: str) -> None:
    job = api_service.create_job()
    r = api_service.get(f"/v1/tunings.events/{job['id']}?{query}")
    assert r.status == 400 and r.error["param"] == query.split("=")[0]
    api_service.post(f"/v1/tunings.cancel/{job['id']}")


# ---- the real trainer ----------------------------------------------------------------------------------

SMALL = {"epochs": 1, "batch_size": 4, "max_seq_length": 64, "logging_steps": 1}


def _wait_for_step(svc: ServiceProcess, job_id: str, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = svc.get(f"/v1/tunings.get/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        if (job["metrics"] or {}).get("current_step", 0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached step {step}")


def _runs(svc: ServiceProcess, job_id: str) -> list[dict[str, Any]]:
    records = svc.get(f"/v1/tunings.events/{job_id}?limit=1000").json()["data"]
    assert all(r["type"] != "log" for r in records)  # events carry no raw output lines
    return records


# Long enough never to finish by itself: each test checks the resumed run, then cancels it.
ENDLESS = {**SMALL, "epochs": 1000, "max_steps": 100000}


def _check_resumed(svc: ServiceProcess, job_id: str, step: int | None) -> list[dict[str, Any]]:
    """Wait until the resumed run has reported two steps; check it started at the checkpoint, same total."""
    deadline = time.monotonic() + 240
    while True:
        records = _runs(svc, job_id)
        started = [r for r in records if r["type"] == "started"]
        resumed = [
            r
            for r in records
            if r["type"] == "metrics" and len(started) == 2 and r["seq"] > started[1]["seq"]
        ]
        if len(resumed) >= 2:
            break
        assert time.monotonic() < deadline, "the resumed run never reported steps"
        time.sleep(0.1)
    assert started[0]["start_step"] == 0 and started[1]["start_step"] > 0
    if step is not None:
        assert started[1]["start_step"] == step
    assert started[0]["total_steps"] == started[1]["total_steps"]
    assert resumed[0]["step"] == started[1]["start_step"] + 1  # continues, nothing re-trained from 0
    job = svc.get(f"/v1/tunings.get/{job_id}").json()
    assert job["status"] == "running" and job["error"] is None and job["finished_at"] is None
    return records


@pytest.mark.slow
def test_a_cancelled_job_resumes_from_its_checkpoint_to_the_same_total(live_service: ServiceProcess) -> None:
    job = live_service.create_job(method="lora", hyperparameters=ENDLESS)
    try:
        _wait_for_step(live_service, job["id"], 2)
        assert live_service.post(f"/v1/tunings.cancel/{job['id']}").status == 200
        live_service.wait_for(job["id"], "cancelled", timeout=90)
        ckpts = live_service.get(f"/v1/tunings.checkpoints/{job['id']}").json()["data"]
        step = ckpts[-1]["step"]
        assert step >= 2 and isinstance(ckpts[-1]["metrics"]["train_loss"], float)
        r = live_service.post(f"/v1/tunings.resume/{job['id']}")
        assert r.status == 200 and r.json()["status"] == "queued" and r.json()["finished_at"] is None
        records = _check_resumed(live_service, job["id"], step)
        statuses = [r["status"] for r in records if r["type"] == "status"]
        assert statuses == ["queued", "running", "cancelling", "cancelled", "queued", "running"]
    finally:
        if live_service.post(f"/v1/tunings.cancel/{job['id']}").status == 200:
            live_service.wait_for(job["id"], "cancelled", timeout=90)


@pytest.mark.slow
def test_a_job_failed_by_an_outside_signal_resumes_from_its_checkpoint(live_service: ServiceProcess) -> None:
    job = live_service.create_job(method="lora", hyperparameters=ENDLESS)
    try:
        _wait_for_step(live_service, job["id"], 2)
        os.killpg(
            _pgid_of(live_service, job["id"]), signal.SIGTERM
        )  # not a cancel: the job fails, checkpointed
        failed = live_service.wait_for(job["id"], "failed", timeout=90)
        assert failed["error"]["code"] == "interrupted"
        r = live_service.post(f"/v1/tunings.resume/{job['id']}")
        assert r.status == 200 and r.json()["error"] is None and r.json()["status"] == "queued"
        _check_resumed(live_service, job["id"], None)
    finally:
        if live_service.post(f"/v1/tunings.cancel/{job['id']}").status == 200:
            live_service.wait_for(job["id"], "cancelled", timeout=90)


def _pgid_of(svc: ServiceProcess, job_id: str) -> int:
    import psutil

    marker = str(svc.data_dir / "jobs" / job_id)
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in a for a in p.info["cmdline"] or []):
            return os.getpgid(p.pid)
    raise AssertionError("trainer process not found")

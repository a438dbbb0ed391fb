"""Start-up recovery with real (fake-trainer) processes that outlive the manager that started them."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import (
    all_events,
    group_pids,
    kill_group,
    launches,
    make_settings,
    request,
    run,
    wait_status,
    wait_until,
)
from tuning_service import procs
from tuning_service.engine.facade import JobManager

TERMINAL = {"succeeded", "failed", "cancelled"}


async def started_job(tmp_path: Path, mode: str, **extra: Any) -> tuple[JobManager, str, dict[str, Any], int]:
    """A manager with one job whose trainer is running and has reported progress."""
    m = await JobManager.start(make_settings(tmp_path))
    owner, _ = await m.create_key("t")
    job, _ = await m.create(owner=owner, request=request(mode, **extra), idempotency_key=None)

    async def reporting() -> bool:
        row = await m.store.get_job(job["id"])
        return row is not None and row["pgid"] is not None and (row["metrics"] or {}).get("current_step")

    await wait_until(reporting, 10, "the trainer to report a step")
    row = await m.store.get_job(job["id"])
    assert row is not None
    return m, owner, job, row["pgid"]


def assert_clean_log(records: list[dict[str, Any]], steps: int) -> None:
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert [r["type"] for r in records].count("started") == 1
    assert [r["step"] for r in records if r["type"] == "metrics"] == list(range(1, steps + 1))
    lines = [r["line"] for r in records if r["type"] == "log"]
    assert len(lines) == len(set(lines))  # no output line twice


def test_live_trainer_is_reattached_and_followed_to_the_end(tmp_path: Path) -> None:
    async def body() -> None:
        a, owner, job, pgid = await started_job(tmp_path, "complete?steps=30&delay=0.04")
        await a.stop()  # never kills trainers
        assert group_pids(pgid), "the trainer must outlive the service"
        b = await JobManager.start(make_settings(tmp_path))
        try:
            # Recovery ran before start() returned: the job is followed by b already.
            assert job["id"] in b.supervisor.tracked
            assert (await b.get(job["id"], owner=owner))["status"] == "running"
            done = await wait_status(b, job["id"], owner, TERMINAL)
            assert done["status"] == "succeeded" and done["metrics"]["current_step"] == 30
            assert_clean_log(await all_events(b, job["id"], owner), 30)
            assert len(launches(b.settings, job["id"])) == 1
        finally:
            kill_group(pgid)
            await b.stop()

    run(body())


def test_trainer_that_finished_while_the_service_was_down(tmp_path: Path) -> None:
    async def body() -> None:
        a, owner, job, pgid = await started_job(tmp_path, "complete?steps=8&delay=0.03")
        await a.stop()
        await wait_until(lambda: _gone(pgid), 10, "the trainer to finish")
        b = await JobManager.start(make_settings(tmp_path))
        try:
            got = await b.get(job["id"], owner=owner)  # settled during start-up, not later
            assert got["status"] == "succeeded" and got["adapter_path"] and got["trained_tokens"] == 80
            assert job["id"] not in b.supervisor.tracked
            assert_clean_log(await all_events(b, job["id"], owner), 8)
        finally:
            await b.stop()

    run(body())


def test_failure_while_down_keeps_the_trainers_verdict(tmp_path: Path) -> None:
    async def body() -> None:
        a = await JobManager.start(make_settings(tmp_path))
        owner, _ = await a.create_key("t")
        job, _ = await a.create(owner=owner, request=request("fail?wait=0.5"), idempotency_key=None)

        async def launched() -> bool:
            row = await a.store.get_job(job["id"])
            return row is not None and row["pgid"] is not None

        await wait_until(launched, 10, "the trainer to start")
        pgid = (await a.store.get_job(job["id"]))["pgid"]
        await a.stop()
        await wait_until(lambda: _gone(pgid), 10, "the trainer to exit")
        b = await JobManager.start(make_settings(tmp_path))
        try:
            got = await b.get(job["id"], owner=owner)
            assert got["status"] == "failed" and got["error"]["code"] == "invalid_data"
            assert got["error"]["line"] == 3 and "ERROR: bad data on line 3" in got["error"]["log_tail"]
        finally:
            kill_group(pgid)
            await b.stop()

    run(body())


async def _gone(pgid: int) -> bool:
    return group_pids(pgid) == []


def test_dead_trainer_without_records_fails_with_service_restart(tmp_path: Path) -> None:
    async def body() -> None:
        a, owner, job, pgid = await started_job(tmp_path, "complete?steps=500&delay=0.02")
        await a.stop()
        kill_group(pgid)  # dies with the service down, no terminal record
        await wait_until(lambda: _gone(pgid), 10, "the trainer to die")
        b = await JobManager.start(make_settings(tmp_path))
        try:
            got = await b.get(job["id"], owner=owner)
            assert got["status"] == "failed"
            err = got["error"]
            assert err["code"] == "service_restart" and "no longer running" in err["message"]
            assert any(line.startswith("step ") for line in err["log_tail"])
            records = await all_events(b, job["id"], owner)
            assert records[-1]["type"] == "status" and records[-1]["status"] == "failed"
        finally:
            await b.stop()

    run(body())


def test_reused_pid_is_never_touched(tmp_path: Path) -> None:
    """The job's pid now belongs to an unrelated process (different start time): recovery must not signal it
    or report the job running; the job fails with service_restart."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)

    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        owner, _ = await m.create_key("t")
        job, _ = await m.create(owner=owner, request=request(), idempotency_key=None)
        real_start = procs.start_time(victim.pid)
        assert real_start is not None
        async with m.store.transaction() as tx:  # as left by a service whose trainer has since died
            await tx.update(
                job["id"], status="running", started_at=time.time(), pid=victim.pid, pgid=victim.pid,
                proc_start_time=real_start - 1234, supervisor_id=None,
            )  # fmt: skip
        await m.stop()
        fake_row = {"pid": victim.pid, "pgid": victim.pid, "proc_start_time": real_start - 1234}
        assert not procs.job_alive(fake_row) and not procs.signal_job(fake_row, 15)
        b = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        try:
            got = await b.get(job["id"], owner=owner)
            assert got["status"] == "failed" and got["error"]["code"] == "service_restart"
            assert job["id"] not in b.supervisor.tracked
            await asyncio.sleep(0.2)
            assert victim.poll() is None  # still alive: never signalled
        finally:
            await b.stop()

    try:
        run(body())
    finally:
        victim.kill()
        victim.wait()


def test_claimed_but_never_started(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        owner, _ = await m.create_key("t")
        job, _ = await m.create(owner=owner, request=request(), idempotency_key=None)
        queued, _ = await m.create(owner=owner, request=request(), idempotency_key=None)
        # Claimed by a service process on this host that died before it launched the trainer.
        dead = subprocess.Popen(["true"])
        dead.wait()
        claimed = await m.store.claim_next(
            supervisor_id=f"{socket.gethostname()}:{dead.pid}:1:x", max_concurrent=1, gpus=[], now=time.time()
        )
        assert claimed is not None and claimed["id"] == job["id"] and claimed["pid"] is None
        await m.stop()
        b = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=1))
        try:
            got = await b.get(job["id"], owner=owner)
            assert got["status"] == "failed" and got["error"]["code"] == "service_restart"
            # Queued work survives the restart and runs once recovery is done.
            assert (await wait_status(b, queued["id"], owner, TERMINAL))["status"] == "succeeded"
        finally:
            await b.stop()

    run(body())


def test_cancel_requested_before_the_restart_ends_cancelled(tmp_path: Path) -> None:
    async def body() -> None:
        a, owner, job, pgid = await started_job(tmp_path, "complete?steps=500&delay=0.02")
        try:
            assert (await a.cancel(job["id"], owner=owner))["status"] == "cancelling"
            await a.stop()  # the service goes down while the trainer checkpoints
            await wait_until(lambda: _gone(pgid), 10, "the trainer to stop")
            b = await JobManager.start(make_settings(tmp_path))
            try:
                got = await b.get(job["id"], owner=owner)
                assert got["status"] == "cancelled"
                last = (await all_events(b, job["id"], owner))[-1]
                assert "checkpoint saved" in last["message"]
            finally:
                await b.stop()
        finally:
            kill_group(pgid)

    run(body())


def test_jobs_of_a_live_worker_are_left_alone(tmp_path: Path) -> None:
    async def body() -> None:
        a, owner, job, pgid = await started_job(tmp_path, "complete?steps=40&delay=0.03")
        b = await JobManager.start(make_settings(tmp_path))
        try:
            assert b.supervisor.tracked == {}
            row = await b.store.get_job(job["id"])
            assert row is not None and row["supervisor_id"] == a.supervisor.id
            assert (await wait_status(a, job["id"], owner, TERMINAL))["status"] == "succeeded"
        finally:
            kill_group(pgid)
            await b.stop()
            await a.stop()

    run(body())


# ---- resume_on_restart: the trainer died with the service -----------------------------------------------


async def _checkpointed(m: JobManager, job_id: str, step: int) -> None:
    async def saved() -> bool:
        row = await m.store.get_job(job_id)
        return (
            row is not None and bool(row["checkpoint_path"]) and row["checkpoint_path"].endswith(f"-{step}")
        )

    await wait_until(saved, 15, f"a checkpoint at step {step}")


def test_a_job_that_asked_for_it_resumes_from_its_checkpoint_after_a_restart(tmp_path: Path) -> None:
    async def body() -> None:
        a, owner, job, pgid = await started_job(
            tmp_path, "complete?steps=40&delay=0.05&save=5", resume_on_restart=True
        )
        assert job["resume_on_restart"] is True
        await _checkpointed(a, job["id"], 10)
        await a.stop()
        kill_group(pgid)  # the trainer dies with the service (kill -9 of both)
        await wait_until(lambda: _gone(pgid), 10, "the trainer to die")
        b = await JobManager.start(make_settings(tmp_path))
        try:
            got = await b.get(job["id"], owner=owner)
            # Settled during recovery, before any request: queued again (or already relaunched), never failed.
            assert got["status"] in ("queued", "running") and got["error"] is None
            done = await wait_status(b, job["id"], owner, TERMINAL, timeout=30)
            assert done["status"] == "succeeded" and done["metrics"]["current_step"] == 40
            records = await all_events(b, job["id"], owner)
            (resumed,) = [r for r in records if r["type"] == "resumed_after_restart"]
            step = resumed["step"]
            assert step >= 10 and step % 5 == 0 and resumed["checkpoint"] == f"checkpoints/checkpoint-{step}"
            starts = [r["start_step"] for r in records if r["type"] == "started"]
            assert starts == [0, step]  # the second run began at the checkpoint, not at step 0
            second_run = [r["step"] for r in records if r["type"] == "metrics" and r["seq"] > resumed["seq"]]
            assert second_run == list(range(step + 1, 41))
            statuses = [r["status"] for r in records if r["type"] == "status"]
            assert statuses == ["queued", "running", "queued", "running", "succeeded"]
            assert "failed" not in statuses  # no terminal state in between (webhooks, metrics, streams)
            assert len(launches(b.settings, job["id"])) == 2
            cfg = (b.settings.jobs_dir / job["id"] / "config.json").read_text()
            assert f"checkpoint-{step}" in cfg
        finally:
            await b.stop()

    run(body())


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("complete?steps=500&delay=0.02", {"resume_on_restart": True}),  # asked, but no checkpoint
        ("complete?steps=500&delay=0.02&save=2", {}),  # checkpoints, but did not ask
    ],
    ids=["no-checkpoint", "not-asked"],
)
def test_otherwise_a_lost_trainer_still_fails_with_service_restart(
    tmp_path: Path, mode: str, extra: dict[str, Any]
) -> None:
    async def body() -> None:
        a, owner, job, pgid = await started_job(tmp_path, mode, **extra)
        if "save" in mode:
            await _checkpointed(a, job["id"], 2)
        await a.stop()
        kill_group(pgid)
        await wait_until(lambda: _gone(pgid), 10, "the trainer to die")
        b = await JobManager.start(make_settings(tmp_path))
        try:
            got = await b.get(job["id"], owner=owner)
            assert got["status"] == "failed" and got["error"]["code"] == "service_restart"
            records = await all_events(b, job["id"], owner)
            assert not [r for r in records if r["type"] == "resumed_after_restart"]
            assert len(launches(b.settings, job["id"])) == 1
        finally:
            await b.stop()

    run(body())


def test_a_run_of_an_executor_this_service_does_not_run_fails_executor_lost(tmp_path: Path) -> None:
    """A job left running on Ray by a service that now starts with TUNING_EXECUTOR=local: nothing here can
    follow it, so it fails with executor_lost (naming both) instead of staying `running` forever."""

    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        owner, _ = await m.create_key("t")
        job, _ = await m.create(owner=owner, request=request(), idempotency_key=None)
        async with m.store.transaction() as tx:
            await tx.update(
                job["id"], status="running", started_at=time.time(), executor="ray", executor_ref=job["id"],
                supervisor_id=None,
            )  # fmt: skip
        await m.stop()
        b = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        try:
            got = await b.get(job["id"], owner=owner)
            assert got["status"] == "failed" and got["error"]["code"] == "executor_lost", got
            assert (
                "ray executor" in got["error"]["message"]
                and "TUNING_EXECUTOR=local" in got["error"]["message"]
            )
        finally:
            await b.stop()

    run(body())

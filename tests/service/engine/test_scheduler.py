"""The scheduler with the fake trainer: the concurrency limit counted in SQLite, GPU leases, and two managers
(like two uvicorn workers) on one database: no job launched twice, cancel through either, adoption of the
jobs of a worker that died."""

from __future__ import annotations

import asyncio
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
from tuning_service.engine.facade import JobManager
from tuning_service.errors import APIError
from tuning_service.states import ACTIVE

TERMINAL = {"succeeded", "failed", "cancelled"}


class ActiveSampler:
    """Samples how many jobs are active (running/cancelling) in the database, every 10 ms."""

    def __init__(self, m: JobManager) -> None:
        self.m = m
        self.peak = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            rows = await self.m.store.active_jobs()
            assert all(r["status"] in {s.value for s in ACTIVE} for r in rows)
            self.peak = max(self.peak, len(rows))
            await asyncio.sleep(0.01)

    async def stop(self) -> int:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        return self.peak


def test_concurrency_limit_and_queue_positions(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=2))
        owner, _ = await m.create_key("t")
        sampler = ActiveSampler(m)
        try:
            jobs = []
            for _ in range(5):
                job, _ = await m.create(
                    owner=owner, request=request("complete?steps=8&delay=0.03"), idempotency_key=None
                )
                jobs.append(job)
            await wait_until(lambda: _count(m, "running", 2), 10, "two running jobs")
            listed, _ = await m.list(owner=owner, status="queued", after=None, limit=10)
            # Newest first in the list; positions count from the oldest queued job.
            assert [j["queue_position"] for j in listed] == list(range(len(listed), 0, -1))
            assert all(
                j["queue_position"] is None
                for j in (await m.list(owner=owner, status="running", after=None, limit=10))[0]
            )
            done = [await wait_status(m, j["id"], owner, TERMINAL) for j in jobs]
            assert [j["status"] for j in done] == ["succeeded"] * 5
            assert await sampler.stop() == 2  # the limit was reached and never exceeded
            # Jobs ran in submission order: each started no earlier than the one before.
            starts = [j["started_at"] for j in done]
            assert starts == sorted(starts)
        finally:
            await sampler.stop()
            await m.stop()

    run(body())


async def _count(m: JobManager, status: str, n: int) -> bool:
    return sum(r["status"] == status for r in await m.store.active_jobs()) >= n


def test_gpu_leases_set_cuda_visible_devices(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=4, gpus=["0", "1"]))
        owner, _ = await m.create_key("t")
        try:
            slow = request("complete?steps=10&delay=0.03")
            a, _ = await m.create(owner=owner, request=slow, idempotency_key=None)
            b, _ = await m.create(owner=owner, request=slow, idempotency_key=None)
            # More GPUs than the service leases: refused before anything is stored.
            with pytest.raises(APIError) as refused:
                await m.create(owner=owner, request=request("complete", num_gpus=3), idempotency_key=None)
            assert (refused.value.status_code, refused.value.param) == (422, "num_gpus")
            assert "leases 2 GPUs" in refused.value.message
            # A two-GPU job.
            two = request("complete?steps=10&delay=0.03", num_gpus=2)
            c, _ = await m.create(owner=owner, request=two, idempotency_key=None)
            assert c["num_gpus"] == 2
            await wait_until(lambda: _count(m, "running", 2), 10, "two running jobs")
            # Two GPUs, two one-GPU jobs: the two-GPU job waits although the job limit is 4.
            assert (await m.get(c["id"], owner=owner))["queue_position"] == 1
            for j in (a, b, c):
                assert (await wait_status(m, j["id"], owner, TERMINAL))["status"] == "succeeded"
            devices = [launches(m.settings, j["id"])[0].split()[1] for j in (a, b, c)]
            assert sorted(devices[:2]) == ["0", "1"] and devices[2] == "0,1"
            assert (await m.store.get_job(c["id"]))["gpu_lease"] == ["0", "1"]
        finally:
            await m.stop()

    run(body())


def test_two_managers_on_one_database_never_launch_a_job_twice(tmp_path: Path) -> None:
    async def body() -> None:
        settings = make_settings(tmp_path, max_concurrent_jobs=2)
        a = await JobManager.start(settings)
        b = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=2))
        owner, _ = await a.create_key("t")
        sampler = ActiveSampler(a)
        try:
            jobs: list[dict[str, Any]] = []
            for i in range(8):
                m = (a, b)[i % 2]
                job, _ = await m.create(
                    owner=owner, request=request("complete?steps=3&delay=0.02"), idempotency_key=None
                )
                jobs.append(job)
            for job in jobs:
                assert (await wait_status(a, job["id"], owner, TERMINAL))["status"] == "succeeded"
                assert len(launches(settings, job["id"])) == 1
                records = await all_events(b, job["id"], owner)
                assert [r["type"] for r in records].count("started") == 1
                assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
            assert await sampler.stop() <= 2
            supervisors = {(await a.store.get_job(j["id"]))["supervisor_id"] for j in jobs}
            assert supervisors <= {a.supervisor.id, b.supervisor.id}
        finally:
            await sampler.stop()
            await a.stop()
            await b.stop()

    run(body())


def test_cancel_through_the_worker_that_does_not_supervise(tmp_path: Path) -> None:
    async def body() -> None:
        a = await JobManager.start(make_settings(tmp_path, cancel_grace_seconds=1.0))
        owner, _ = await a.create_key("t")
        polite, _ = await a.create(owner=owner, request=request("complete?steps=500&delay=0.02"),
                                   idempotency_key=None)  # fmt: skip
        stubborn, _ = await a.create(
            owner=owner, request=request("ignore_term?delay=0.02"), idempotency_key=None
        )
        pgids = []
        b = None
        try:
            for j in (polite, stubborn):
                await wait_until(lambda j=j: _has_metrics(a, j["id"]), 10, "the trainer to start")
                pgids.append((await a.store.get_job(j["id"]))["pgid"])
            # A second worker starts now: A's jobs stay A's (fresh heartbeat); B only receives the cancel.
            b = await JobManager.start(make_settings(tmp_path, cancel_grace_seconds=1.0))
            assert b.supervisor.tracked == {}
            for j in (polite, stubborn):
                assert (await b.cancel(j["id"], owner=owner))["status"] == "cancelling"
            polite_done = await wait_status(b, polite["id"], owner, TERMINAL)
            stubborn_done = await wait_status(b, stubborn["id"], owner, TERMINAL)
            assert polite_done["status"] == stubborn_done["status"] == "cancelled"
            assert (tmp_path / "data" / "jobs" / polite["id"] / "checkpoints").is_dir()
            last = (await all_events(b, stubborn["id"], owner))[-1]
            assert "killed after the 1 s grace period" in last["message"]  # A enforced the SIGKILL
            for pgid in pgids:
                assert group_pids(pgid) == []
        finally:
            for pgid in pgids:
                kill_group(pgid)
            await a.stop()
            if b is not None:
                await b.stop()

    run(body())


async def _has_metrics(m: JobManager, job_id: str) -> bool:
    row = await m.store.get_job(job_id)
    return row is not None and row["metrics"] is not None and row["pgid"] is not None


def test_jobs_of_a_dead_worker_are_adopted(tmp_path: Path) -> None:
    """Worker A stops heart-beating without handing its jobs back (as if it hung or was killed); after the
    stale period worker B adopts the running job and follows it to the end, without duplicating records."""

    async def body() -> None:
        a = await JobManager.start(make_settings(tmp_path))
        owner, _ = await a.create_key("t")
        job, _ = await a.create(
            owner=owner, request=request("complete?steps=40&delay=0.05"), idempotency_key=None
        )
        await wait_until(lambda: _has_metrics(a, job["id"]), 10, "the trainer to start")
        pgid = (await a.store.get_job(job["id"]))["pgid"]
        # "Kill" A: its loops stop, nothing is handed back.
        await a.scheduler.stop()
        assert a.supervisor._task is not None
        a.supervisor._task.cancel()
        b = await JobManager.start(make_settings(tmp_path, supervisor_stale_seconds=1.0))
        try:
            assert job["id"] not in b.supervisor.tracked  # A's heartbeat is still fresh
            t0 = time.monotonic()
            await wait_until(lambda: _adopted(b, job["id"]), 10, "B to adopt the job")
            assert time.monotonic() - t0 < 5
            done = await wait_status(b, job["id"], owner, TERMINAL)
            assert done["status"] == "succeeded", done["error"]
            records = await all_events(b, job["id"], owner)
            assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
            assert [r["step"] for r in records if r["type"] == "metrics"] == list(range(1, 41))
            assert len(launches(b.settings, job["id"])) == 1
        finally:
            kill_group(pgid)
            await b.stop()
            await a.store.close()

    run(body())


async def _adopted(m: JobManager, job_id: str) -> bool:
    row = await m.store.get_job(job_id)
    return row is not None and row["supervisor_id"] == m.supervisor.id


def test_stopping_never_leaves_a_claimed_job_without_its_trainer(tmp_path: Path) -> None:
    """Stop right after a submit, many times: each job is either still queued or running with its trainer's
    pid recorded (the claim and the launch are never cut in half)."""

    async def body() -> None:
        pgids = []
        try:
            for i in range(6):
                m = await JobManager.start(make_settings(tmp_path))
                owner, _ = await m.create_key("t")
                job, _ = await m.create(owner=owner, request=request("complete"), idempotency_key=None)
                await asyncio.sleep(0.005 * i)
                await m.stop()
                await m.store.open()
                row = await m.store.get_job(job["id"])
                await m.store.close()
                assert row is not None
                assert row["status"] == "queued" or row["pid"] is not None, row["status"]
                pgids.append(row["pgid"])
        finally:
            for pgid in pgids:
                kill_group(pgid)

    run(body())

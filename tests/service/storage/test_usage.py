"""storage/usage.py: GPU time per run, the queue's order (priority, fair share, creation), per-key limits,
on a real SQLite file with the clock given explicitly (each run lasts exactly what the test says)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import run
from tests.service.storage.test_store import open_store
from tuning_service.states import JobStatus
from tuning_service.storage.store import Store
from tuning_service.storage.usage import QuotaExceeded

T0 = 1_000_000.0


async def with_store(tmp_path: Path, body: Callable[[Store], Awaitable[None]]) -> None:
    store = await open_store(tmp_path / "t.db")
    try:
        await body(store)
    finally:
        await store.close()


async def key(store: Store, key_id: str, **limits: Any) -> str:
    await store.insert_key(key_id=key_id, name=key_id, key_hash="h-" + key_id, now=T0, limits=limits)
    return key_id


async def queue(store: Store, owner: str, *, now: float = T0, priority: int = 0, **kw: Any) -> str:
    req: dict[str, Any] = {"model": "m", "training_file": "t.jsonl"}
    if priority:
        req["priority"] = priority
    row, _ = await store.create_job(
        owner=owner,
        model="m",
        request=req,
        request_hash=json.dumps(req, sort_keys=True),
        idempotency_key=kw.get("idempotency_key"),
        hyperparameters={"epochs": 1},
        num_gpus=kw.get("num_gpus", 1),
        now=now,
        quota_since=now - 3600 * 24,
    )
    return str(row["id"])


async def claim(store: Store, now: float, *, max_concurrent: int = 1, window: float = 3600.0) -> str | None:
    row = await store.claim_next(
        supervisor_id="w", max_concurrent=max_concurrent, gpus=[], now=now, fair_share_since=now - window
    )
    return None if row is None else str(row["id"])


async def finish(store: Store, job_id: str, now: float) -> None:
    async with store.transaction() as tx:
        row = await tx.job(job_id)
        assert row is not None
        await tx.transition(row, JobStatus.SUCCEEDED, now=now)


def test_two_keys_alternate_under_fair_share(tmp_path: Path) -> None:
    """Key a queues three jobs, then key b three: with equal runs, the key with less recent GPU time goes
    first, so the slot alternates a b a b a b (creation order alone would run a's three first)."""

    async def body(store: Store) -> None:
        a, b = await key(store, "key_a"), await key(store, "key_b")
        jobs = {await queue(store, a, now=T0 + i): f"a{i}" for i in range(3)}
        jobs |= {await queue(store, b, now=T0 + 10 + i): f"b{i}" for i in range(3)}
        order = []
        now = T0 + 100
        while (job := await claim(store, now)) is not None:
            order.append(jobs[job])
            now += 60  # every run lasts a minute
            await finish(store, job, now)
        assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]
        # GPU time is what counts: a key whose runs lasted longer waits behind one with shorter runs.
        assert await store.job_runtime(next(iter(jobs)), since=0, now=now) == pytest.approx(60)

    run(with_store(tmp_path, body))


def test_fair_share_forgets_gpu_time_older_than_its_window(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        a, b = await key(store, "key_a"), await key(store, "key_b")
        first = await queue(store, a, now=T0)
        assert await claim(store, T0) == first
        await finish(store, first, T0 + 600)  # a used 10 minutes
        a_job = await queue(store, a, now=T0 + 700)
        b_job = await queue(store, b, now=T0 + 800)
        positions = await store.queue_positions(now=T0 + 900, fair_share_since=T0 + 900 - 3600)
        assert positions == {b_job: 1, a_job: 2}
        # Two hours later a's ten minutes are out of the one-hour window: creation order again.
        later = T0 + 600 + 7200
        assert await store.queue_positions(now=later, fair_share_since=later - 3600) == {a_job: 1, b_job: 2}
        assert await claim(store, later, window=3600) == a_job

    run(with_store(tmp_path, body))


def test_priority_comes_before_fair_share_and_creation_order(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        a, b = await key(store, "key_a"), await key(store, "key_b")
        used = await queue(store, b, now=T0)
        await claim(store, T0)
        await finish(store, used, T0 + 3000)  # b has used GPU time; a has none
        low = await queue(store, a, now=T0 + 3001)
        high = await queue(store, b, now=T0 + 3002, priority=5)
        negative = await queue(store, a, now=T0 + 3003, priority=-1)
        positions = await store.queue_positions(now=T0 + 3100, fair_share_since=T0)
        assert positions == {high: 1, low: 2, negative: 3}
        assert [await claim(store, T0 + 3100 + i, max_concurrent=3) for i in range(3)] == [
            high,
            low,
            negative,
        ]

    run(with_store(tmp_path, body))


def test_a_key_at_its_running_limit_is_passed_over_not_blocking_others(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        a, b = await key(store, "key_a", max_running_jobs=1), await key(store, "key_b")
        a1, a2 = await queue(store, a, now=T0), await queue(store, a, now=T0 + 1)
        b1 = await queue(store, b, now=T0 + 2)
        assert await claim(store, T0 + 3, max_concurrent=3) == a1
        assert await claim(store, T0 + 4, max_concurrent=3) == b1  # a2 waits: a runs its one job
        assert await claim(store, T0 + 5, max_concurrent=3) is None
        await finish(store, a1, T0 + 6)
        assert await claim(store, T0 + 7, max_concurrent=3) == a2
        usage = await store.key_usage(a, now=T0 + 8, since=0)
        assert usage["running_jobs"] == 1 and usage["queued_jobs"] == 0
        assert usage["gpu_seconds"] == pytest.approx(3 + 1)  # a1's 3 s, and a2's first second
        assert usage["limits"] == {"max_running_jobs": 1, "max_queued_jobs": None, "max_gpu_hours": None}

    run(with_store(tmp_path, body))


def test_max_queued_jobs_refuses_the_next_create_and_stores_nothing(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        a = await key(store, "key_a", max_queued_jobs=2)
        first = await queue(store, a, idempotency_key="k1")
        await queue(store, a)
        with pytest.raises(QuotaExceeded) as exc:
            await queue(store, a)
        assert exc.value.limit == "max_queued_jobs" and "max_queued_jobs = 2" in exc.value.message
        assert (await store.counts())[1] == 2  # nothing half made
        # A replay of an earlier create (its idempotency key) is no new job: it still answers.
        assert await queue(store, a, idempotency_key="k1") == first
        # Another key is not limited by a's limit; a running job frees a queued place.
        await queue(store, await key(store, "key_b"))
        await claim(store, T0 + 1)
        await queue(store, a)

    run(with_store(tmp_path, body))


def test_max_gpu_hours_counts_the_window_and_lifting_it_allows_again(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        a = await key(store, "key_a", max_gpu_hours=1.0)
        job = await queue(store, a, num_gpus=2)
        await store.claim_next(supervisor_id="w", max_concurrent=1, gpus=["0", "1"], now=T0)
        await finish(store, job, T0 + 1800)  # 2 GPUs x 30 minutes: one GPU hour
        assert (await store.key_usage(a, now=T0 + 1800, since=0))["gpu_seconds"] == pytest.approx(3600)
        with pytest.raises(QuotaExceeded) as exc:
            await queue(store, a, now=T0 + 1900)
        assert exc.value.limit == "max_gpu_hours" and "1.00 GPU hours" in exc.value.message
        # Out of the window (a day here), the hour no longer counts.
        await queue(store, a, now=T0 + 1800 + 86400 + 1)
        assert await store.update_key_limits("key_a", {"max_gpu_hours": None}) == a
        await queue(store, a, now=T0 + 2000)
        assert await store.update_key_limits("nobody", {"max_gpu_hours": None}) is None

    run(with_store(tmp_path, body))


def test_credentials_are_kept_per_key_and_never_listed(tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        a, b = await key(store, "key_a"), await key(store, "key_b")
        assert await store.set_key_credentials(a, {"wandb_api_key": "w-secret", "hf_token": "hf-secret"}) == a
        assert await store.key_environment(a) == {"WANDB_API_KEY": "w-secret", "HF_TOKEN": "hf-secret"}
        assert await store.key_environment(b) == {}
        listed = await store.list_keys()
        assert "secret" not in json.dumps(listed)
        assert [(k["id"], k["has_wandb_api_key"], k["has_hf_token"]) for k in listed] == [
            (a, 1, 1),
            (b, 0, 0),
        ]
        await store.set_key_credentials(a, {"wandb_api_key": None})
        assert await store.key_environment(a) == {"HF_TOKEN": "hf-secret"}
        assert await store.set_key_credentials("nobody", {"hf_token": "x"}) is None

    run(with_store(tmp_path, body))


def test_a_run_that_ended_unwatched_is_charged_until_its_last_record_not_the_recovery(tmp_path: Path) -> None:
    """The trainer finished a minute in; the service came back eight hours later and settled it: the key is
    charged a minute (its GPU time, fair share, max_runtime_seconds), not the outage."""

    async def body(store: Store) -> None:
        a = await key(store, "key_a")
        job = await queue(store, a)
        await claim(store, T0)
        later = T0 + 8 * 3600
        async with store.transaction() as tx:
            await tx.append(job, [("metrics", T0 + 30, {"step": 1}), ("completed", T0 + 60, {})])
            await tx.append(job, [("log", later, {"line": "read at recovery"})])  # the service's clock
            assert await tx.last_trainer_time(job) == T0 + 60
            row = await tx.job(job)
            assert row is not None
            await tx.transition(row, JobStatus.SUCCEEDED, now=later, run_ended_at=T0 + 60)
        assert await store.job_runtime(job, since=0, now=later) == pytest.approx(60)
        assert (await store.key_usage(a, now=later, since=0))["gpu_seconds"] == pytest.approx(60)

    run(with_store(tmp_path, body))

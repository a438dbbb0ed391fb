"""The SQLite store against a real database file: DDL, pragmas, transactions, atomic claims, idempotency,
pagination and event sequence numbers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import run
from tuning_service.states import IllegalTransition, JobStatus
from tuning_service.storage.db import BUSY_TIMEOUT_MS, SCHEMA_VERSION
from tuning_service.storage.store import Store, new_job_id


async def open_store(path: Path) -> Store:
    store = Store(path)
    await store.open()
    return store


async def add_job(store: Store, owner: str = "key_a", key: str | None = None, **kw: Any) -> dict[str, Any]:
    req = {"model": "m", "training_file": "t.jsonl", **kw.pop("request", {})}
    row, _ = await store.create_job(
        owner=owner,
        model="m",
        request=req,
        request_hash=json.dumps(req, sort_keys=True),
        idempotency_key=key,
        hyperparameters={"epochs": 1},
        num_gpus=kw.pop("num_gpus", 0),
        now=time.time(),
    )
    return row


def test_job_ids_look_like_openai_ids() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    for job_id in ids:
        assert job_id.startswith("ftjob-") and len(job_id) == 6 + 24
        int(job_id[6:], 16)


def test_ddl_is_idempotent_and_pragmas_hold(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "tuning.db"

    async def body() -> None:
        store = await open_store(db)
        job = await add_job(store)
        assert await store.pragma("journal_mode") == "wal"
        assert await store.pragma("busy_timeout") == BUSY_TIMEOUT_MS
        assert await store.pragma("foreign_keys") == 1
        assert await store.pragma("user_version") == SCHEMA_VERSION
        await store.close()
        # Re-opening runs the DDL again: nothing is lost, nothing fails.
        store = await open_store(db)
        assert (await store.get_job(job["id"]))["status"] == "queued"
        await store.close()

    run(body())
    con = sqlite3.connect(db)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "job_events", "api_keys"} <= tables
    indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "jobs_owner_idempotency" in indexes
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(tmp_path / "t.db")
        job = await add_job(store)
        with pytest.raises(IllegalTransition):
            async with store.transaction() as tx:
                row = await tx.job(job["id"])
                assert row is not None
                await tx.update(job["id"], metrics={"progress": 0.5})
                await tx.transition(row, JobStatus.SUCCEEDED, now=time.time())  # queued -> succeeded: illegal
        row = await store.get_job(job["id"])
        assert row is not None and row["metrics"] is None and row["status"] == "queued"
        # The connection is usable again after the rollback.
        async with store.transaction() as tx:
            row = await tx.job(job["id"])
            assert row is not None
            row = await tx.transition(row, JobStatus.CANCELLED, now=time.time(), message="bye")
        assert row["status"] == "cancelled" and row["finished_at"] is not None
        events, _ = await store.records(job["id"], after=0, limit=10)
        assert [(e["seq"], e["status"]) for e in events] == [(1, "queued"), (2, "cancelled")]
        assert events[-1]["message"] == "bye"
        await store.close()

    run(body())


def test_event_sequence_numbers_and_paging(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(tmp_path / "t.db")
        a, b = await add_job(store), await add_job(store)

        async def append(job_id: str, n: int) -> None:
            for i in range(n):
                async with store.transaction() as tx:
                    await tx.append(job_id, [("log", time.time(), {"line": f"{job_id} {i}"})])

        # Concurrent appenders on two jobs: each job's seq still runs 1, 2, 3... without gaps.
        await asyncio.gather(append(a["id"], 30), append(b["id"], 30), append(a["id"], 5))
        for job_id, n in ((a["id"], 36), (b["id"], 31)):
            events, more = await store.records(job_id, after=0, limit=1000)
            assert [e["seq"] for e in events] == list(range(1, n + 1)) and not more
            assert await store.last_seq(job_id) == n
        page, more = await store.records(a["id"], after=10, limit=5)
        assert [e["seq"] for e in page] == [11, 12, 13, 14, 15] and more
        assert page[0]["type"] == "log" and "line" in page[0] and "time" in page[0]
        page, more = await store.records(a["id"], after=34, limit=5)
        assert [e["seq"] for e in page] == [35, 36] and not more
        assert await store.last_seq("ftjob-nope") is None
        # Only a finished job is deleted (the check and the delete share a transaction), and its records go
        # with it (foreign key, ON DELETE CASCADE).
        assert await store.delete_job(a["id"], owner=a["owner"]) == "queued"
        assert await store.delete_job(a["id"], owner="someone-else") == ""
        async with store.transaction() as tx:
            await tx.transition(await tx.job(a["id"]), JobStatus.CANCELLED, now=time.time())
        assert await store.delete_job(a["id"], owner=a["owner"]) is None
        assert (await store.records(a["id"], after=0, limit=10))[0] == []
        await store.close()

    run(body())


def test_idempotency_is_atomic_across_connections(tmp_path: Path) -> None:
    async def body() -> None:
        stores = [await open_store(tmp_path / "t.db") for _ in range(2)]
        req = {"model": "m", "training_file": "t.jsonl"}

        async def create(i: int) -> tuple[dict[str, Any], bool]:
            return await stores[i % 2].create_job(
                owner="key_a", model="m", request=req, request_hash="h", idempotency_key="same",
                hyperparameters={}, num_gpus=0, now=time.time(),
            )  # fmt: skip

        results = await asyncio.gather(*(create(i) for i in range(20)))
        assert sum(created for _, created in results) == 1
        assert len({row["id"] for row, _ in results}) == 1
        # The key is scoped per owner: another key may use the same idempotency key.
        other = await add_job(stores[0], owner="key_b", key="same")
        assert other["id"] != results[0][0]["id"]
        # Without a key every create is a new job.
        x, y = await add_job(stores[0]), await add_job(stores[1])
        assert x["id"] != y["id"]
        for s in stores:
            await s.close()

    run(body())


def test_list_is_newest_first_with_cursor_and_filter(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(tmp_path / "t.db")
        mine = [(await add_job(store))["id"] for _ in range(5)]
        theirs = (await add_job(store, owner="key_b"))["id"]
        rows, more = await store.list_jobs(owner="key_a", status=None, after=None, limit=2)
        assert [r["id"] for r in rows] == [mine[4], mine[3]] and more
        rows, more = await store.list_jobs(owner="key_a", status=None, after=mine[3], limit=2)
        assert [r["id"] for r in rows] == [mine[2], mine[1]] and more
        rows, more = await store.list_jobs(owner="key_a", status=None, after=mine[1], limit=2)
        assert [r["id"] for r in rows] == [mine[0]] and not more
        # Another owner's id (or an unknown one) is not a cursor into my list.
        assert (await store.list_jobs(owner="key_a", status=None, after=theirs, limit=10))[0] == []
        async with store.transaction() as tx:
            row = await tx.job(mine[2])
            assert row is not None
            await tx.transition(row, JobStatus.CANCELLED, now=time.time())
        rows, _ = await store.list_jobs(owner="key_a", status="cancelled", after=None, limit=10)
        assert [r["id"] for r in rows] == [mine[2]]
        rows, _ = await store.list_jobs(owner="key_a", status="queued", after=None, limit=10)
        assert [r["id"] for r in rows] == [mine[4], mine[3], mine[1], mine[0]]
        positions = await store.queue_positions(now=time.time(), fair_share_since=0)
        assert [positions[j] for j in (mine[0], mine[1], mine[3], mine[4], theirs)] == [1, 2, 3, 4, 5]
        assert await store.counts() == (5, 6)
        await store.close()

    run(body())


def test_claims_respect_the_limit_and_order(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(tmp_path / "t.db")
        ids = [(await add_job(store))["id"] for _ in range(3)]
        kw: dict[str, Any] = {"supervisor_id": "w1", "max_concurrent": 2, "gpus": []}
        first = await store.claim_next(now=time.time(), **kw)
        second = await store.claim_next(now=time.time(), **kw)
        assert first is not None and second is not None
        assert [first["id"], second["id"]] == ids[:2]  # oldest first
        assert first["status"] == "running" and first["supervisor_id"] == "w1" and first["started_at"]
        assert await store.claim_next(now=time.time(), **kw) is None  # the limit counts running jobs
        async with store.transaction() as tx:
            await tx.transition(first, JobStatus.FAILED, now=time.time())
        third = await store.claim_next(now=time.time(), **kw)
        assert third is not None and third["id"] == ids[2]
        events, _ = await store.records(third["id"], after=0, limit=10)
        assert [e["status"] for e in events] == ["queued", "running"]
        await store.close()

    run(body())


def test_gpu_leases(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(tmp_path / "t.db")
        a = await add_job(store, num_gpus=1)
        b = await add_job(store, num_gpus=2)
        c = await add_job(store, num_gpus=1)
        kw: dict[str, Any] = {"supervisor_id": "w1", "max_concurrent": 10, "gpus": ["0", "1"]}
        got = await store.claim_next(now=time.time(), **kw)
        assert got is not None and got["id"] == a["id"] and got["gpu_lease"] == ["0"]
        # b needs two GPUs, one is leased: it waits, and c does not overtake it.
        assert await store.claim_next(now=time.time(), **kw) is None
        async with store.transaction() as tx:
            await tx.transition(got, JobStatus.SUCCEEDED, now=time.time())
        got = await store.claim_next(now=time.time(), **kw)
        assert got is not None and got["id"] == b["id"] and got["gpu_lease"] == ["0", "1"]
        assert await store.claim_next(now=time.time(), **kw) is None
        async with store.transaction() as tx:
            await tx.transition(got, JobStatus.FAILED, now=time.time())
        got = await store.claim_next(now=time.time(), **kw)
        assert got is not None and got["id"] == c["id"] and got["gpu_lease"] == ["0"]
        await store.close()

    run(body())


CLAIMER = """
import asyncio, sys, time
from pathlib import Path
from tuning_service.storage.store import Store

async def main():
    store = Store(Path(sys.argv[1]))
    await store.open()
    claimed = []
    misses = 0
    while misses < 20:
        row = await store.claim_next(supervisor_id=sys.argv[2], max_concurrent=1000, gpus=[], now=time.time())
        if row is None:
            misses += 1
            await asyncio.sleep(0.005)
        else:
            claimed.append(row["id"])
    print("\\n".join(claimed))
    await store.close()

asyncio.run(main())
"""


def test_claims_are_atomic_across_processes(tmp_path: Path) -> None:
    """Three processes (like uvicorn workers) race to claim 60 jobs: every job is claimed exactly once."""
    db = tmp_path / "t.db"

    async def setup() -> list[str]:
        store = await open_store(db)
        ids = [(await add_job(store))["id"] for _ in range(60)]
        await store.close()
        return ids

    ids = run(setup())
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(db), f"w{i}"], stdout=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    claimed = [j for out in outputs for j in out]
    assert sorted(claimed) == sorted(ids)  # all claimed, none twice

    async def check() -> None:
        store = await open_store(db)
        for i, out in enumerate(outputs):
            for job_id in out:
                row = await store.get_job(job_id)
                assert row is not None and row["supervisor_id"] == f"w{i}" and row["status"] == "running"
                events, _ = await store.records(job_id, after=0, limit=10)
                assert [e["status"] for e in events] == ["queued", "running"]
        await store.close()

    run(check())


def test_adopt_is_won_by_exactly_one(tmp_path: Path) -> None:
    async def body() -> None:
        stores = [await open_store(tmp_path / "t.db") for _ in range(2)]
        await add_job(stores[0])
        row = await stores[0].claim_next(supervisor_id="dead", max_concurrent=5, gpus=[], now=time.time())
        assert row is not None
        wins = await asyncio.gather(
            *(
                stores[i % 2].adopt(row["id"], old_supervisor="dead", new_supervisor=f"w{i}", now=time.time())
                for i in range(6)
            )
        )
        assert sum(wins) == 1
        winner = f"w{wins.index(True)}"
        assert (await stores[1].get_job(row["id"]))["supervisor_id"] == winner
        for s in stores:
            await s.close()

    run(body())


def test_api_keys(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(tmp_path / "t.db")
        assert await store.insert_key(key_id="key_1", name="ci", key_hash="h1", now=1.0)
        assert not await store.insert_key(key_id="key_x", name="dup", key_hash="h1", now=2.0)  # same hash
        assert await store.insert_key(key_id="key_2", name="ci", key_hash="h2", now=3.0)
        assert (await store.key_by_hash("h1"))["id"] == "key_1"
        assert await store.count_active_keys() == 2
        assert await store.revoke_keys("ci", now=4.0) == 2  # by name: every active key of that name
        assert await store.revoke_keys("key_1", now=5.0) == 0  # already revoked
        keys = await store.list_keys()
        assert [k["id"] for k in keys] == ["key_1", "key_2"]
        assert all(k["revoked_at"] == 4.0 for k in keys)
        assert "key_hash" not in keys[0]
        await store.close()

    run(body())


def test_cancelled_transaction_leaves_the_connection_usable(tmp_path: Path) -> None:
    """A task cancelled inside a transaction (e.g. the supervisor loop at shutdown) must not leave the shared
    connection inside BEGIN: the next transaction works and the cancelled writes are gone."""

    async def body() -> None:
        store = await open_store(tmp_path / "t.db")
        job = await add_job(store)
        entered = asyncio.Event()

        async def slow_writer() -> None:
            async with store.transaction() as tx:
                await tx.update(job["id"], metrics={"progress": 0.9})
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(slow_writer())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with store.transaction() as tx:
            row = await tx.job(job["id"])
            assert row is not None and row["metrics"] is None
            await tx.update(job["id"], metrics={"progress": 0.1})
        assert (await store.get_job(job["id"]))["metrics"] == {"progress": 0.1}
        # Cancelled right as it starts (BEGIN in flight): still clean.
        for _ in range(20):
            t = asyncio.create_task(store.heartbeat("w", time.time()))
            await asyncio.sleep(0)
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass
        async with store.transaction() as tx:
            await tx.update(job["id"], trained_tokens=5)
        assert (await store.get_job(job["id"]))["trained_tokens"] == 5
        await store.close()

    run(body())

"""The service's storage: jobs, their event records and API keys in one SQLite file (db.py: the
plumbing).

Reads are single statements; anything that reads and then writes runs inside `transaction()` (BEGIN IMMEDIATE)
and checks the rowcount of its conditional UPDATE, so claims stay atomic across worker processes.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from .db import Database, Tx
from .states import ACTIVE, NON_TERMINAL, JobStatus

_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in ACTIVE)
_NON_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in NON_TERMINAL)


def new_job_id() -> str:
    return "ftjob-" + secrets.token_hex(12)


class Store(Database):
    # ---- jobs --------------------------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        owner: str,
        model: str,
        request: dict[str, Any],
        request_hash: str,
        idempotency_key: str | None,
        hyperparameters: dict[str, Any],
        config: dict[str, Any] | None,
        num_gpus: int,
        now: float,
    ) -> tuple[dict[str, Any], bool]:
        """Insert a queued job (with its first `status` record), or return the job that already holds
        (owner, idempotency_key). The check and the insert share one BEGIN IMMEDIATE transaction."""
        async with self.transaction() as tx:
            if idempotency_key is not None:
                existing = await tx.one(
                    "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, idempotency_key)
                )
                if existing is not None:
                    return existing, False
            job_id = new_job_id()
            await tx.execute(
                "INSERT INTO jobs (id, owner, status, model, request, request_hash, idempotency_key,"
                " hyperparameters, config, num_gpus, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    owner,
                    JobStatus.QUEUED.value,
                    model,
                    json.dumps(request, sort_keys=True),
                    request_hash,
                    idempotency_key,
                    json.dumps(hyperparameters, sort_keys=True),
                    None if config is None else json.dumps(config, sort_keys=True),
                    num_gpus,
                    now,
                ),
            )
            await tx.append(job_id, [("status", now, {"status": JobStatus.QUEUED.value})])
            row = await tx.job(job_id)
            assert row is not None
            return row, True

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        return await self.one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    async def list_jobs(
        self, *, owner: str, status: str | None, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first. `after` is a job id of this owner: the page starts just below it."""
        sql = "SELECT * FROM jobs WHERE owner = ?"
        params: list[Any] = [owner]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        if after is not None:
            sql += " AND ord < COALESCE((SELECT ord FROM jobs WHERE id = ? AND owner = ?), -1)"
            params += [after, owner]
        sql += " ORDER BY ord DESC LIMIT ?"
        params.append(limit + 1)
        rows = await self.all(sql, params)
        return rows[:limit], len(rows) > limit

    async def queue_positions(self) -> dict[str, int]:
        """1-based position of every queued job, in claim order (oldest first)."""
        rows = await self.all("SELECT id FROM jobs WHERE status = 'queued' ORDER BY ord")
        return {r["id"]: i for i, r in enumerate(rows, start=1)}

    async def counts(self) -> tuple[int, int]:
        row = await self.one(
            f"SELECT COUNT(*) AS total, SUM(status IN ({_NON_TERMINAL_SQL})) AS active FROM jobs"
        )
        assert row is not None
        return int(row["active"] or 0), int(row["total"] or 0)

    async def active_jobs(self) -> list[dict[str, Any]]:
        return await self.all(f"SELECT * FROM jobs WHERE status IN ({_ACTIVE_SQL}) ORDER BY ord")

    async def supervised_by(self, supervisor_id: str) -> list[dict[str, Any]]:
        return await self.all(
            f"SELECT * FROM jobs WHERE supervisor_id = ? AND status IN ({_ACTIVE_SQL})", (supervisor_id,)
        )

    async def delete_job(self, job_id: str) -> None:
        async with self.transaction() as tx:
            await tx.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # ---- scheduling --------------------------------------------------------------------------------------

    async def claim_next(
        self, *, supervisor_id: str, max_concurrent: int, gpus: list[str], now: float
    ) -> dict[str, Any] | None:
        """Atomically move the oldest queued job to `running`, owned by `supervisor_id`, if a slot (and its
        GPUs) are free. Jobs are claimed strictly in order: a job waiting for GPUs is not overtaken."""
        # A plain read first: an idle scheduler polling every half second never takes the write lock.
        if await self.one("SELECT 1 AS x FROM jobs WHERE status = 'queued' LIMIT 1") is None:
            return None
        async with self.transaction() as tx:
            active = await tx.all(f"SELECT gpu_lease FROM jobs WHERE status IN ({_ACTIVE_SQL})")
            if len(active) >= max_concurrent:
                return None
            head = await tx.one("SELECT * FROM jobs WHERE status = 'queued' ORDER BY ord LIMIT 1")
            if head is None:
                return None
            lease: list[str] = []
            if gpus:
                leased = {g for r in active for g in (r["gpu_lease"] or [])}
                free = [g for g in gpus if g not in leased]
                need = max(1, int(head["num_gpus"] or 1))
                if len(free) < need:
                    return None
                lease = free[:need]
            changed = await tx.update(
                head["id"],
                where={"status": JobStatus.QUEUED.value},
                status=JobStatus.RUNNING.value,
                started_at=now,
                supervisor_id=supervisor_id,
                supervisor_heartbeat=now,
                gpu_lease=lease,
            )
            if changed != 1:  # cannot happen under BEGIN IMMEDIATE; the rowcount is the proof of the claim
                return None
            await tx.append(head["id"], [("status", now, {"status": JobStatus.RUNNING.value})])
            return await tx.job(head["id"])

    async def heartbeat(self, supervisor_id: str, now: float) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "UPDATE jobs SET supervisor_heartbeat = ? WHERE supervisor_id = ?"
                f" AND status IN ({_ACTIVE_SQL})",
                (now, supervisor_id),
            )

    async def adopt(
        self, job_id: str, *, old_supervisor: str | None, new_supervisor: str, now: float
    ) -> bool:
        """Take over supervision of a job whose supervisor is gone; only one worker's UPDATE can match."""
        async with self.transaction() as tx:
            changed = await tx.update(
                job_id,
                where={"supervisor_id": old_supervisor},
                supervisor_id=new_supervisor,
                supervisor_heartbeat=now,
            )
            return changed == 1

    # ---- events ------------------------------------------------------------------------------------------

    async def events(self, job_id: str, *, after: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        rows = await self.all(
            "SELECT seq, type, time, data FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, after, limit + 1),
        )
        out = []
        for r in rows[:limit]:
            rec = {"seq": r["seq"], "type": r["type"], "time": r["time"]}
            for k, v in json.loads(r["data"]).items():
                rec.setdefault(k, v)
            out.append(rec)
        return out, len(rows) > limit

    async def last_seq(self, job_id: str) -> int | None:
        row = await self.one("SELECT last_seq FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else int(row["last_seq"])

    # ---- API keys ----------------------------------------------------------------------------------------

    async def insert_key(self, *, key_id: str, name: str, key_hash: str, now: float) -> bool:
        """Insert a key unless one with this hash exists (then a no-op). Returns True if inserted."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "INSERT OR IGNORE INTO api_keys (id, name, key_hash, created_at) VALUES (?, ?, ?, ?)",
                (key_id, name, key_hash, now),
            )
            return cur.rowcount == 1

    async def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        return await self.one("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))

    async def revoke_keys(self, id_or_name: str, now: float) -> int:
        async with self.transaction() as tx:
            cur = await tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
                (now, id_or_name, id_or_name),
            )
            return cur.rowcount

    async def list_keys(self) -> list[dict[str, Any]]:
        return await self.all("SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at, id")

    async def count_active_keys(self) -> int:
        row = await self.one("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
        return 0 if row is None else int(row["n"])


__all__ = ["Store", "Tx", "new_job_id"]

"""The `jobs` table: creating a job, reading it (whole, as the public object needs it, or just its stamp),
listing, scheduling claims, supervision heartbeats and adoption, deletion."""

from __future__ import annotations

import json
import secrets
from typing import Any, NamedTuple

from ..states import NON_TERMINAL, JobStatus
from .db import Database
from .usage import ACTIVE_SQL as _ACTIVE_SQL
from .usage import QUEUE_ORDER, check_quota

_NON_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in NON_TERMINAL)
# What a listed job needs (manager.public_job). Not `SELECT *`: decoding the trainer config, the terminal
# record and the request's copy of the hyperparameters of 100 rows (in Python), only to drop them, was about
# half of a page's CPU time (docs/benchmarks.md, B2); SQLite drops them in C.
_LIST_COLUMNS = (
    "id, status, model, fine_tuned_model, adapter_path, json_remove(request, '$.hyperparameters') AS request,"
    " hyperparameters, metrics, error, trained_tokens, created_at, started_at, finished_at, retries"
)

# A terminal job's public object changes only with these: it changes only through a status transition, and
# a job reaching a terminal status again (after a resume) gets a new finished_at. routes_jobs caches the
# encoded JSON of terminal jobs under them; the index jobs_owner_page covers them.
STAMP_COLUMNS = "id, status, finished_at"


def _list_query(
    columns: str,
    owner: str,
    status: str | None,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
) -> tuple[str, list[Any]]:
    sql = f"SELECT {columns} FROM jobs WHERE owner = ?"
    params: list[Any] = [owner]
    if status is not None:
        sql += " AND status = ?"
        params.append(status)
    for k, v in (metadata or {}).items():
        sql += (
            " AND EXISTS (SELECT 1 FROM json_each(jobs.request, '$.metadata') m"
            " WHERE m.key = ? AND m.value = ?)"
        )
        params += [k, v]
    if after is not None:
        sql += " AND ord < COALESCE((SELECT ord FROM jobs WHERE id = ? AND owner = ?), -1)"
        params += [after, owner]
    sql += " ORDER BY ord DESC LIMIT ?"
    params.append(limit + 1)
    return sql, params


def new_job_id() -> str:
    return "ftjob-" + secrets.token_hex(12)


class Stamp(NamedTuple):
    """What tells whether a cached public job is still current (`STAMP_COLUMNS`), and its owner."""

    owner: str
    status: str
    finished_at: float | None


class JobTables(Database):
    async def create_job(
        self,
        *,
        owner: str,
        model: str,
        request: dict[str, Any],
        request_hash: str,
        job_id: str | None = None,
        idempotency_key: str | None,
        hyperparameters: dict[str, Any],
        num_gpus: int,
        now: float,
        quota_since: float | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Insert a queued job (with its first `status` record), or return the job that already holds
        (owner, idempotency_key). The check, the owner's quotas (QuotaExceeded; GPU hours counted since
        `quota_since`) and the insert share one BEGIN IMMEDIATE transaction. `job_id`: an id made beforehand
        (new_job_id), for a job whose folder is prepared before it is queued."""
        async with self.transaction() as tx:
            if idempotency_key is not None:
                existing = await tx.one(
                    "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, idempotency_key)
                )
                if existing is not None:
                    return existing, False
            await check_quota(tx, owner, now=now, quota_since=now if quota_since is None else quota_since)
            job_id = job_id or new_job_id()
            await tx.execute(
                "INSERT INTO jobs (id, owner, status, model, request, request_hash, idempotency_key,"
                " hyperparameters, num_gpus, priority, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    owner,
                    JobStatus.QUEUED.value,
                    model,
                    json.dumps(request, sort_keys=True),
                    request_hash,
                    idempotency_key,
                    json.dumps(hyperparameters, sort_keys=True),
                    num_gpus,
                    int(request.get("priority") or 0),
                    now,
                ),
            )
            await tx.append(job_id, [("status", now, {"status": JobStatus.QUEUED.value})])
            row = await tx.job(job_id)
            assert row is not None
            return row, True

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        return await self.one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    async def get_public_job(self, job_id: str) -> dict[str, Any] | None:
        """The owner and the columns of a public job (`_LIST_COLUMNS`): what GET tunings.get needs."""
        return await self.one(f"SELECT owner, {_LIST_COLUMNS} FROM jobs WHERE id = ?", (job_id,))

    async def job_stamp(self, job_id: str) -> Stamp | None:
        """What tells whether a cached public job is still current (`STAMP_COLUMNS`), and its owner."""
        rows = self.reader.execute("SELECT owner, status, finished_at FROM jobs WHERE id = ?", (job_id,))
        row = rows.fetchone()
        return None if row is None else Stamp(row[0], row[1], row[2])

    async def list_jobs(
        self,
        *,
        owner: str,
        status: str | None,
        after: str | None,
        limit: int,
        metadata: dict[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, the columns of a public job (`_LIST_COLUMNS`). `after` is a job id of this owner: the
        page starts just below it. `metadata`: every pair must be in the job's metadata."""
        sql, params = _list_query(_LIST_COLUMNS, owner, status, after, limit, metadata)
        rows = await self.all(sql, params)
        return rows[:limit], len(rows) > limit

    async def list_job_stamps(
        self, *, owner: str, status: str | None, after: str | None, limit: int
    ) -> tuple[list[tuple[str, str, float | None]], bool]:
        """The same page as list_jobs, as plain (id, status, finished_at) tuples (`STAMP_COLUMNS`), read from
        the index jobs_owner_page alone."""
        sql, params = _list_query(STAMP_COLUMNS, owner, status, after, limit, None)
        cur = self.reader.cursor()
        cur.row_factory = None  # plain tuples: a page of them is a hot path
        rows = cur.execute(sql, params).fetchall()
        return rows[:limit], len(rows) > limit

    async def status_counts(self) -> dict[str, int]:
        """How many jobs are in each status (statuses without jobs are absent)."""
        rows = await self.all("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {str(r["status"]): int(r["n"]) for r in rows}

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

    async def delete_job(self, job_id: str, *, owner: str) -> str | None:
        """Delete a terminal job of `owner` (its records go with it). Returns None when done, else the
        status that kept it ("" when there is no such job of this owner): the check and the delete share
        one transaction."""
        async with self.transaction() as tx:
            row = await tx.one("SELECT owner, status FROM jobs WHERE id = ?", (job_id,))
            if row is None or row["owner"] != owner:
                return ""
            if not JobStatus(row["status"]).is_terminal():
                return str(row["status"])
            await tx.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return None

    async def release_jobs(self, supervisor_id: str) -> None:
        """A worker that stops hands its jobs back (the trainers keep running): the next one adopts them."""
        async with self.transaction() as tx:
            await tx.execute("UPDATE jobs SET supervisor_id = NULL WHERE supervisor_id = ?", (supervisor_id,))

    # ---- scheduling --------------------------------------------------------------------------------------

    async def claim_next(
        self,
        *,
        supervisor_id: str,
        max_concurrent: int,
        gpus: list[str],
        now: float,
        fair_share_since: float | None = None,
    ) -> dict[str, Any] | None:
        """Atomically move the first queued job to `running`, owned by `supervisor_id`, if a slot (and its
        GPUs) are free. The queue's order (usage.QUEUE_ORDER): priority, then the key with the least GPU
        time since `fair_share_since`, then creation order. A job whose key already runs its
        max_running_jobs is passed over; otherwise jobs are claimed strictly in order: a job waiting for
        GPUs is not overtaken. The claim opens the run's `job_runs` row (its GPU time)."""
        # A plain read first: an idle scheduler polling every half second never takes the write lock.
        if await self.one("SELECT 1 AS x FROM jobs WHERE status = 'queued' LIMIT 1") is None:
            return None
        async with self.transaction() as tx:
            active = await tx.all(f"SELECT owner, gpu_lease FROM jobs WHERE status IN ({_ACTIVE_SQL})")
            if len(active) >= max_concurrent:
                return None
            since = now if fair_share_since is None else fair_share_since
            head = None
            running: dict[str, int] = {}
            for r in active:
                running[r["owner"]] = running.get(r["owner"], 0) + 1
            limits = {
                r["id"]: r["max_running_jobs"]
                for r in await tx.all(
                    "SELECT id, max_running_jobs FROM api_keys WHERE max_running_jobs IS NOT NULL"
                )
            }
            for candidate in await tx.all(QUEUE_ORDER, {"now": now, "since": since}):
                limit = limits.get(candidate["owner"])
                if limit is None or running.get(candidate["owner"], 0) < limit:
                    head = candidate
                    break
            if head is None:
                return None
            lease: list[str] = []
            if gpus:
                leased = {g for r in active for g in (r["gpu_lease"] or [])}
                leased |= {str(r["gpu"]) for r in await tx.all("SELECT gpu FROM gpu_leases")}
                free = [g for g in gpus if g not in leased]
                need = max(1, int(head["num_gpus"] or 1))
                if len(free) < need:
                    return None
                lease = free[:need]
            changed = await tx.update(
                head["id"],
                where={"status": JobStatus.QUEUED.value},
                status=JobStatus.RUNNING.value,
                # The first start: a resumed job keeps it (its `status` records say when each run began).
                **({"started_at": now} if head["started_at"] is None else {}),
                supervisor_id=supervisor_id,
                supervisor_heartbeat=now,
                gpu_lease=lease,
            )
            if changed != 1:  # cannot happen under BEGIN IMMEDIATE; the rowcount is the proof of the claim
                return None
            await tx.append(head["id"], [("status", now, {"status": JobStatus.RUNNING.value})])
            await tx.execute(
                "INSERT INTO job_runs (job_id, owner, started_at, gpus) VALUES (?, ?, ?, ?)",
                (head["id"], head["owner"], now, max(1, len(lease), int(head["num_gpus"] or 1))),
            )
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

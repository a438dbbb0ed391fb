"""The service's storage: jobs, their event records and API keys in one SQLite file (db.py: the
plumbing).

Reads are single statements; anything that reads and then writes runs inside `transaction()` (BEGIN IMMEDIATE)
and checks the rowcount of its conditional UPDATE, so claims stay atomic across worker processes.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from ..engine.states import ACTIVE, NON_TERMINAL, JobStatus
from .db import Database, Tx

_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in ACTIVE)
_NON_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in NON_TERMINAL)
# What a listed job needs (manager.public_job). Not `SELECT *`: decoding the trainer config, the terminal
# record and the request's copy of the hyperparameters of 100 rows (in Python), only to drop them, was about
# half of a page's CPU time (docs/benchmarks.md, B2); SQLite drops them in C.
_LIST_COLUMNS = (
    "id, status, model, fine_tuned_model, adapter_path, json_remove(request, '$.hyperparameters') AS request,"
    " hyperparameters, metrics, error, trained_tokens, created_at, started_at, finished_at"
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

    async def get_public_job(self, job_id: str) -> dict[str, Any] | None:
        """The owner and the columns of a public job (`_LIST_COLUMNS`): what GET tunings.get needs."""
        return await self.one(f"SELECT owner, {_LIST_COLUMNS} FROM jobs WHERE id = ?", (job_id,))

    async def job_stamp(self, job_id: str) -> dict[str, Any] | None:
        """What tells whether a cached public job is still current (`STAMP_COLUMNS`), and its owner."""
        return await self.one(f"SELECT owner, {STAMP_COLUMNS} FROM jobs WHERE id = ?", (job_id,))

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

    async def queue_positions(self) -> dict[str, int]:
        """1-based position of every queued job, in claim order (oldest first)."""
        rows = await self.all("SELECT id FROM jobs WHERE status = 'queued' ORDER BY ord")
        return {r["id"]: i for i, r in enumerate(rows, start=1)}

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
                # The first start: a resumed job keeps it (its `status` records say when each run began).
                **({"started_at": now} if head["started_at"] is None else {}),
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

    async def records(
        self,
        job_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int,
        exclude_types: tuple[str, ...] = (),
        only_types: tuple[str, ...] = (),
        newest_first: bool = False,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of records, filtered by type, oldest first (seq > after) or newest first (seq < before)."""
        sql = "SELECT seq, type, time, data FROM job_events WHERE job_id = ?"
        params: list[Any] = [job_id]
        if after is not None:
            sql += " AND seq > ?"
            params.append(after)
        if before is not None:
            sql += " AND seq < ?"
            params.append(before)
        if exclude_types:
            sql += f" AND type NOT IN ({', '.join('?' * len(exclude_types))})"
            params += list(exclude_types)
        if only_types:
            sql += f" AND type IN ({', '.join('?' * len(only_types))})"
            params += list(only_types)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        params.append(limit + 1)
        rows = await self.all(sql, params, in_thread=limit > 1000)  # big scans off the event loop
        out = []
        for r in rows[:limit]:
            rec = {"seq": r["seq"], "type": r["type"], "time": r["time"]}
            for k, v in json.loads(r["data"]).items():
                rec.setdefault(k, v)
            out.append(rec)
        return out, len(rows) > limit

    async def metrics_at(self, job_id: str, step: int) -> dict[str, Any]:
        """The last metrics (and eval) values reported at or before `step`."""
        out: dict[str, Any] = {"step": step, "train_loss": None, "learning_rate": None, "epoch": None,
                               "eval_loss": None}  # fmt: skip
        for type_ in ("metrics", "eval"):
            row = await self.one(
                "SELECT data FROM job_events WHERE job_id = ? AND type = ?"
                " AND CAST(json_extract(data, '$.step') AS INTEGER) <= ? ORDER BY seq DESC LIMIT 1",
                (job_id, type_, step),
            )
            if row is None:
                continue
            data = json.loads(row["data"])
            if type_ == "metrics":
                out.update(
                    train_loss=data.get("loss"),
                    learning_rate=data.get("learning_rate"),
                    epoch=data.get("epoch"),
                )
            elif data.get("step") == step:
                out["eval_loss"] = data.get("eval_loss")
        return out

    async def last_seq(self, job_id: str) -> int | None:
        row = await self.one("SELECT last_seq FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else int(row["last_seq"])

    # ---- files ------------------------------------------------------------------------------------------

    async def insert_file(self, row: dict[str, Any]) -> dict[str, Any]:
        cols = ("id", "owner", "filename", "purpose", "bytes", "status", "format", "num_examples", "error",
                "created_at")  # fmt: skip
        async with self.transaction() as tx:
            await tx.execute(
                f"INSERT INTO files ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [json.dumps(row[c]) if c == "error" and row[c] is not None else row[c] for c in cols],
            )
            out = await tx.one("SELECT * FROM files WHERE id = ?", (row["id"],))
        assert out is not None
        return out

    async def get_file(self, file_id: str) -> dict[str, Any] | None:
        return await self.one("SELECT * FROM files WHERE id = ?", (file_id,))

    async def list_files(
        self, *, owner: str, purpose: str | None, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; `after` is a file id of this owner."""
        sql = "SELECT * FROM files WHERE owner = ?"
        params: list[Any] = [owner]
        if purpose is not None:
            sql += " AND purpose = ?"
            params.append(purpose)
        if after is not None:
            sql += " AND ord < COALESCE((SELECT ord FROM files WHERE id = ? AND owner = ?), -1)"
            params += [after, owner]
        sql += " ORDER BY ord DESC LIMIT ?"
        params.append(limit + 1)
        rows = await self.all(sql, params)
        return rows[:limit], len(rows) > limit

    async def delete_file(self, file_id: str, owner: str) -> str | None:
        """Delete the row unless a job that is not finished names the file; returns that job's id if so.
        The check and the delete share one transaction, so a job cannot start using it in between."""
        async with self.transaction() as tx:
            user = await tx.one(
                f"SELECT id FROM jobs WHERE owner = ? AND status IN ({_NON_TERMINAL_SQL})"
                " AND (json_extract(request, '$.training_file') = ?"
                " OR json_extract(request, '$.validation_file') = ?) ORDER BY ord LIMIT 1",
                (owner, file_id, file_id),
            )
            if user is not None:
                return str(user["id"])
            await tx.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner))
        return None

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

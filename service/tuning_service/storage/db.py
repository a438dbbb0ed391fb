"""SQLite plumbing: open the database (WAL, busy timeout, foreign keys), idempotent DDL,
one transaction helper.

Every read-then-write goes through `Database.transaction()`, which starts with BEGIN IMMEDIATE: the write lock
is taken up front, so two workers (or two coroutines) can never both read "queued" and both claim the job.
Within one process a single aiosqlite connection carries every write, guarded by an asyncio lock so that
statements of concurrent coroutines never interleave inside one transaction; plain reads go through a second,
read-only connection on the event loop's thread (see `Database.one`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args

import aiosqlite

from tuning_trainer.records import RECORDS

from ..states import ACTIVE, JobStatus, check_transition

BUSY_TIMEOUT_MS = 10_000
# The records the trainer writes (tuning_trainer/records.py), as opposed to the service's own.
TRAINER_RECORD_TYPES: tuple[str, ...] = tuple(get_args(r.model_fields["type"].annotation)[0] for r in RECORDS)
SCHEMA_VERSION = 5

# Columns added after the first schema: (table, column, declaration). Added at start-up when missing, so an
# existing database upgrades in place (CREATE TABLE IF NOT EXISTS does not add columns).
ADDED_COLUMNS = (
    ("jobs", "pause_requested_at", "REAL"),
    ("jobs", "resume_from", "TEXT"),  # the checkpoint the next run of this job starts from
    ("api_keys", "webhook_url", "TEXT"),  # the key's default webhook for its jobs (webhooks.py)
    ("api_keys", "webhook_secret", "TEXT"),  # whsec_...: signs deliveries, so it is kept (not a hash)
    ("api_keys", "webhook_secret_previous", "TEXT"),  # after a rotation, also signs until ..._until
    ("api_keys", "webhook_secret_previous_until", "REAL"),
    ("jobs", "model_deleted_at", "REAL"),  # DELETE /v1/models/<fine-tune>: its adapter is gone
    ("jobs", "executor", "TEXT"),  # what ran the job's last run: local | ray (NULL: local, before Ray)
    ("jobs", "executor_ref", "TEXT"),  # the executor's id of that run (the Ray submission id)
    ("jobs", "stream_lines", "INTEGER NOT NULL DEFAULT 0"),  # lines of the run's stdout stored (Ray)
    ("jobs", "stream_seq", "INTEGER NOT NULL DEFAULT 0"),  # the last trainer record seq stored (Ray)
    ("jobs", "priority", "INTEGER NOT NULL DEFAULT 0"),  # the request's priority, for the queue's order
    ("jobs", "retries", "INTEGER NOT NULL DEFAULT 0"),  # automatic retries used (auto_retry)
    ("jobs", "runtime_since", "REAL"),  # max_runtime_seconds counts the runs since (NULL: created_at)
    ("jobs", "deadline_requested_at", "REAL"),  # the run was asked to stop at its max_runtime_seconds
    ("api_keys", "max_running_jobs", "INTEGER"),  # NULL: no limit (quotas, usage.py)
    ("api_keys", "max_queued_jobs", "INTEGER"),
    ("api_keys", "max_gpu_hours", "REAL"),
    ("api_keys", "wandb_api_key", "TEXT"),  # given to this key's trainers only, never shown
    ("api_keys", "hf_token", "TEXT"),
)
# Data rewritten at start-up, idempotent. Before preference tuning a request's `method` named the adapter
# ("qlora"/"lora"); it is now the training method ("sft", "dpo", ...) beside `adapter`.
DATA_MIGRATIONS = (
    "UPDATE jobs SET request = json_set(request, '$.adapter', json_extract(request, '$.method'),"
    " '$.method', 'sft') WHERE json_extract(request, '$.method') IN ('qlora', 'lora')",
)

DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,   -- creation order: list order and pagination cursor
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,                     -- api_keys.id of the creating key
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,                   -- the normalised create body (JSON)
    request_hash TEXT NOT NULL,
    idempotency_key TEXT,
    hyperparameters TEXT NOT NULL,           -- requested, replaced by the resolved ones once started (JSON)
    config TEXT,                             -- the trainer JobConfig written to config.json (JSON)
    metrics TEXT,                            -- public metrics object (JSON)
    error TEXT,                              -- public error object (JSON)
    terminal_record TEXT,                    -- the trainer's completed/failed/interrupted record (JSON)
    fine_tuned_model TEXT,
    adapter_path TEXT,
    checkpoint_path TEXT,
    trained_tokens INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    num_gpus INTEGER NOT NULL DEFAULT 0,
    gpu_lease TEXT,                          -- GPU ids held while running (JSON list)
    pid INTEGER,                             -- the launcher (process group leader)
    pgid INTEGER,
    proc_start_time INTEGER,                 -- leader start time in clock ticks since boot (/proc/<pid>/stat)
    supervisor_id TEXT,                      -- host:pid:start of the worker following the trainer
    supervisor_heartbeat REAL,
    cancel_requested_at REAL,
    exit_code INTEGER,
    events_offset INTEGER NOT NULL DEFAULT 0,  -- bytes of events.jsonl already turned into job_events
    events_lines INTEGER NOT NULL DEFAULT 0,
    log_offset INTEGER NOT NULL DEFAULT 0,     -- bytes of output.log already turned into job_events
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_idempotency
    ON jobs(owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- A key's jobs newest first (tunings.list), covering what tells whether a cached job is current
-- (store.STAMP_COLUMNS): a page of stamps is read from the index alone, never from the wide job rows
-- (16x fewer instructions for 100 rows, docs/benchmarks.md B2). It replaces jobs_owner_ord, its prefix.
CREATE INDEX IF NOT EXISTS jobs_owner_page ON jobs(owner, ord, id, status, finished_at);
DROP INDEX IF EXISTS jobs_owner_ord;
CREATE INDEX IF NOT EXISTS jobs_status_ord ON jobs(status, ord);

CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,                    -- 1, 2, 3... per job
    type TEXT NOT NULL,
    time REAL NOT NULL,
    data TEXT NOT NULL,                      -- the record's other fields (JSON object)
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS files (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,   -- upload order: list order and pagination cursor
    id TEXT NOT NULL UNIQUE,                 -- file-<24 hex>, its bytes in <data_dir>/files/<id>
    owner TEXT NOT NULL,                     -- api_keys.id of the uploading key
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    status TEXT NOT NULL,                    -- processed | error
    format TEXT,
    num_examples INTEGER,
    error TEXT,                              -- {"code", "message", "line"} when status = error (JSON)
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_owner_ord ON files(owner, ord);

CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,           -- sha256 hex of the key (the plaintext is never stored)
    created_at REAL NOT NULL,
    revoked_at REAL
);

CREATE TABLE IF NOT EXISTS job_runs (       -- every run of a job, for GPU time: quotas and fair share
    job_id TEXT NOT NULL,                    -- no FK: a deleted job's GPU time still counts
    owner TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,                           -- NULL while the run holds its slot
    gpus INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS job_runs_owner ON job_runs(owner, started_at);
CREATE INDEX IF NOT EXISTS job_runs_job ON job_runs(job_id, ended_at);
-- A window's runs (usage.py): the ones still going or ended inside it, never the whole history.
CREATE INDEX IF NOT EXISTS job_runs_ended ON job_runs(ended_at);

CREATE TABLE IF NOT EXISTS job_durations (   -- the job duration histogram of /metrics (metrics.py)
    status TEXT PRIMARY KEY,                 -- succeeded | failed | cancelled
    buckets TEXT NOT NULL,                   -- JSON list: jobs per metrics.JOB_DURATION_BUCKETS bucket, +Inf
    count INTEGER NOT NULL,
    sum REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS gpu_leases (        -- GPUs held by something other than a job (the inference
    gpu TEXT PRIMARY KEY,                        -- worker, inference/worker.py), which claim_next skips
    holder TEXT NOT NULL,
    pid INTEGER,                                 -- the holder's process: a dead one's lease is released
    proc_start_time INTEGER,
    since REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS webhook_deliveries (  -- the webhook outbox (webhooks.py), no FK: a job may be
    id TEXT PRIMARY KEY,                         -- deleted while its deliveries are still due
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    event TEXT NOT NULL,                     -- job.succeeded | job.failed | job.cancelled | job.checkpoint
    url TEXT NOT NULL,
    body TEXT NOT NULL,                      -- the exact JSON posted (signed with a fresh timestamp each try)
    status TEXT NOT NULL,                    -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    claimed_by TEXT,                         -- the worker sending it now, until claimed_until
    claimed_until REAL,
    last_status_code INTEGER,
    last_error TEXT,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
"""

JSON_COLUMNS = frozenset(
    {"request", "hyperparameters", "config", "metrics", "error", "terminal_record", "gpu_lease"}
)


def _encode(name: str, value: Any) -> Any:
    if name in JSON_COLUMNS and value is not None:
        return json.dumps(value, sort_keys=True)
    if isinstance(value, JobStatus):
        return value.value
    return value


def row_to_dict(row: aiosqlite.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for name in JSON_COLUMNS & out.keys():
        if out[name] is not None:
            out[name] = json.loads(out[name])
    return out


def rows_to_dicts(rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
    """row_to_dict for many rows of one query: the column names and which of them hold JSON are looked at
    once, not per row (a 100-row page is a hot path)."""
    if not rows:
        return []
    names = rows[0].keys()
    decode = [n for n in names if n in JSON_COLUMNS]
    out = [dict(zip(names, row, strict=True)) for row in rows]
    for name in decode:
        for d in out:
            value = d[name]
            if value is not None:
                d[name] = json.loads(value)
    return out


def _bind(params: Iterable[Any]) -> Any:
    # Named parameters (a mapping, for `:name` placeholders) as they are; positional ones as a tuple.
    return params if isinstance(params, Mapping) else tuple(params)


def _first(rows: Iterable[sqlite3.Row]) -> dict[str, Any] | None:
    for row in rows:
        return row_to_dict(row)
    return None


# Called inside the transaction after records are appended to a job (webhooks.py uses it to put terminal and
# checkpoint events in its outbox, metrics.py to count job durations: atomically with the change itself).
AppendHook = Callable[["Tx", str, list[tuple[str, float, dict[str, Any]]]], Awaitable[None]]


class Tx:
    """The statements available inside one BEGIN IMMEDIATE transaction."""

    def __init__(self, conn: aiosqlite.Connection, on_append: AppendHook | None = None) -> None:
        self.conn = conn
        self.on_append = on_append

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Cursor:
        return await self.conn.execute(sql, _bind(params))

    async def one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        return _first(await self.conn.execute_fetchall(sql, _bind(params)))

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return rows_to_dicts(list(await self.conn.execute_fetchall(sql, _bind(params))))

    async def job(self, job_id: str) -> dict[str, Any] | None:
        return await self.one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    async def update(self, job_id: str, where: dict[str, Any] | None = None, **fields: Any) -> int:
        """UPDATE jobs SET fields WHERE id = job_id [AND col = value ...]; returns the rowcount."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        params = [_encode(k, v) for k, v in fields.items()]
        cond = "id = ?"
        params.append(job_id)
        for k, v in (where or {}).items():
            if v is None:
                cond += f" AND {k} IS NULL"
            else:
                cond += f" AND {k} = ?"
                params.append(_encode(k, v))
        cur = await self.conn.execute(f"UPDATE jobs SET {sets} WHERE {cond}", params)
        return cur.rowcount

    async def last_trainer_time(self, job_id: str) -> float | None:
        """When the trainer last wrote a record of this job (by its own clock; the service's records and
        output lines, stamped when the service read them, do not count)."""
        marks = ", ".join("?" * len(TRAINER_RECORD_TYPES))
        row = await self.one(
            f"SELECT MAX(time) AS t FROM job_events WHERE job_id = ? AND type IN ({marks})",
            (job_id, *TRAINER_RECORD_TYPES),
        )
        return None if row is None or row["t"] is None else float(row["t"])

    async def append(self, job_id: str, records: list[tuple[str, float, dict[str, Any]]]) -> int:
        """Append (type, time, data) records with the next sequence numbers; returns the new last seq."""
        row = await self.one("SELECT last_seq FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise KeyError(job_id)
        seq = int(row["last_seq"])
        if not records:
            return seq
        rows = []
        for type_, time_, data in records:
            seq += 1
            rows.append((job_id, seq, type_, time_, json.dumps(data, default=str)))
        await self.conn.executemany(
            "INSERT INTO job_events (job_id, seq, type, time, data) VALUES (?, ?, ?, ?, ?)", rows
        )
        await self.conn.execute("UPDATE jobs SET last_seq = ? WHERE id = ?", (seq, job_id))
        if self.on_append is not None:
            await self.on_append(self, job_id, records)
        return seq

    async def transition(
        self,
        row: dict[str, Any],
        new: JobStatus,
        *,
        now: float,
        message: str | None = None,
        run_ended_at: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Move a job from row["status"] to `new` (refusing illegal moves), write `fields`, append the
        `status` record. The UPDATE is conditional on the old status, so a concurrent change fails
        loudly. Leaving an active status ends the run's GPU time at `run_ended_at` (when the run ended
        unwatched, e.g. while the service was down), else now."""
        old = JobStatus(row["status"])
        check_transition(old, new)
        if new.is_terminal():
            fields.setdefault("finished_at", now)
        changed = await self.update(row["id"], where={"status": old.value}, status=new.value, **fields)
        if changed != 1:
            raise RuntimeError(f"job {row['id']} changed status concurrently (expected {old.value})")
        if old in ACTIVE and new not in ACTIVE:  # the run gives its slot back: its GPU time ends here
            ended = now if run_ended_at is None else min(now, run_ended_at)
            await self.execute(
                "UPDATE job_runs SET ended_at = MAX(started_at, ?) WHERE job_id = ? AND ended_at IS NULL",
                (ended, row["id"]),
            )
        data: dict[str, Any] = {"status": new.value}
        if message:
            data["message"] = message
        await self.append(row["id"], [("status", now, data)])
        updated = await self.job(row["id"])
        assert updated is not None
        return updated


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self.on_append: AppendHook | None = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
        conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        conn.row_factory = aiosqlite.Row
        self._conn = conn
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        async with conn.execute("PRAGMA journal_mode = WAL") as cur:
            mode = (await cur.fetchone())[0]  # type: ignore[index]
        async with conn.execute("PRAGMA busy_timeout") as cur:
            timeout = (await cur.fetchone())[0]  # type: ignore[index]
        if str(mode).lower() != "wal" or int(timeout) != BUSY_TIMEOUT_MS:
            raise RuntimeError(f"SQLite at {self.path} refused WAL/busy_timeout (journal_mode={mode})")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA synchronous = NORMAL")
        async with self.transaction() as tx:
            for statement in DDL.split(";"):
                if statement.strip():
                    await tx.execute(statement)
            for table, column, decl in ADDED_COLUMNS:
                have = {r["name"] for r in await tx.all(f"PRAGMA table_info({table})")}
                if column not in have:
                    await tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            for statement in DATA_MIGRATIONS:
                await tx.execute(statement)
            await tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        reader = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        reader.row_factory = sqlite3.Row
        reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        reader.execute("PRAGMA query_only = ON")  # a write sent here by mistake fails loudly
        self._reader = reader

    @property
    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("database is not open")
        return self._reader

    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version` on the read connection: it changes whenever any other connection
        (this process's writer, another worker, the `keys` CLI) has committed since the last call. A cheap
        "has anything changed?" for in-memory caches (auth.KeyCache); a few microseconds."""
        row = self.reader.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._conn is not None:
            async with self._lock:
                await self._conn.close()
                self._conn = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """The one transaction helper: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""
        async with self._lock:
            conn = self.conn
            committed = False
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield Tx(conn, self.on_append)
                await conn.execute("COMMIT")
                committed = True
            finally:
                if not committed:
                    # Also on cancellation (e.g. at shutdown), even while BEGIN or COMMIT was in flight:
                    # aiosqlite runs statements in order, so this ROLLBACK comes after them, and the
                    # connection is never left inside a transaction. Shielded so that it always runs.
                    await asyncio.shield(self._rollback())

    async def _rollback(self) -> None:
        try:
            await self.conn.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass  # no transaction was open (BEGIN failed, or COMMIT went through)

    # Reads outside a transaction use a second, read-only connection on the event loop's own thread. They are
    # indexed and bounded (a page is at most 1,000 rows), take tens of microseconds, and in WAL mode never
    # wait for a writer; they see every committed transaction. Sending them through aiosqlite's thread cost
    # three thread hand-offs per query, each waiting for the GIL and, on a busy machine, for a core: that
    # was most of a request's time (docs/benchmarks.md, B1/B2). Big scans pass `in_thread=True`.
    async def one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        return _first(self.reader.execute(sql, _bind(params)).fetchall())

    async def all(
        self, sql: str, params: Iterable[Any] = (), *, in_thread: bool = False
    ) -> list[dict[str, Any]]:
        if in_thread:
            async with self._lock:
                rows = await self.conn.execute_fetchall(sql, _bind(params))
        else:
            rows = self.reader.execute(sql, _bind(params)).fetchall()
        return rows_to_dicts(list(rows))

    async def pragma(self, name: str) -> Any:
        async with self._lock, self.conn.execute(f"PRAGMA {name}") as cur:
            row = await cur.fetchone()
            return None if row is None else row[0]

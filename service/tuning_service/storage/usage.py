"""GPU time and quotas: the `job_runs` table (one row per run of a job, opened by the claim, closed by the
transition that gives the slot back: db.Tx.transition), each key's limits (`api_keys.max_*`), and the
queue's order, which depends on both.

A run's GPU time is its wall time x the GPUs it held (1 on a service without GPUs: there it is process
time). Usage over a window counts the part of each run inside the window, running ones up to now.
"""

from __future__ import annotations

from typing import Any

from ..states import ACTIVE
from .db import Database, Tx

# The statuses that hold a slot, as an SQL list (jobs.py uses it too).
ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in ACTIVE)
LIMITS = ("max_running_jobs", "max_queued_jobs", "max_gpu_hours")

# GPU seconds of the runs that overlap [:since, :now], per owner.
_GPU_SECONDS = (
    "SELECT owner, SUM(gpus * (MIN(COALESCE(ended_at, :now), :now) - MAX(started_at, :since))) AS s"
    " FROM job_runs WHERE (ended_at IS NULL OR ended_at > :since) AND started_at < :now GROUP BY owner"
)
# The queue's one order (claims and queue_position): priority, then the key with the least GPU time in the
# fair-share window, then creation order.
QUEUE_ORDER = (
    "SELECT j.* FROM jobs j LEFT JOIN (" + _GPU_SECONDS + ") u ON u.owner = j.owner"
    " WHERE j.status = 'queued' ORDER BY j.priority DESC, COALESCE(u.s, 0) ASC, j.ord ASC"
)


class QuotaExceeded(Exception):
    """A create over one of its key's limits (`limit` names it); nothing was stored."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.message = message


async def gpu_seconds(tx: Tx | Database, owner: str, *, now: float, since: float) -> float:
    sql = f"SELECT s FROM ({_GPU_SECONDS}) WHERE owner = :owner"
    row = await tx.one(sql, {"now": now, "since": since, "owner": owner})
    return float(row["s"] or 0.0) if row else 0.0


async def check_quota(tx: Tx, owner: str, *, now: float, quota_since: float) -> None:
    """Raise QuotaExceeded if `owner` may not queue one more job (inside the create's transaction, so two
    concurrent creates cannot both take the last place)."""
    key = await tx.one("SELECT max_queued_jobs, max_gpu_hours FROM api_keys WHERE id = ?", (owner,))
    if key is None:
        return
    if key["max_queued_jobs"] is not None:
        row = await tx.one("SELECT COUNT(*) AS n FROM jobs WHERE owner = ? AND status = 'queued'", (owner,))
        queued = int(row["n"]) if row else 0
        if queued >= key["max_queued_jobs"]:
            raise QuotaExceeded(
                "max_queued_jobs",
                f"This API key already has {queued} queued job(s), its limit (max_queued_jobs = "
                f"{key['max_queued_jobs']}): wait for one to start, or cancel one",
            )
    if key["max_gpu_hours"] is not None:
        used = await gpu_seconds(tx, owner, now=now, since=quota_since) / 3600
        if used >= key["max_gpu_hours"]:
            raise QuotaExceeded(
                "max_gpu_hours",
                f"This API key has used {used:.2f} GPU hours in the quota window, its limit (max_gpu_hours "
                f"= {key['max_gpu_hours']:g}); GPU time older than the window stops counting",
            )


class UsageTables(Database):
    async def key_usage(self, owner: str, *, now: float, since: float) -> dict[str, Any]:
        """A key's jobs holding a slot and waiting, its GPU seconds since `since`, and its limits."""
        row = await self.one(
            f"SELECT SUM(status IN ({ACTIVE_SQL})) AS running, SUM(status = 'queued') AS queued"
            " FROM jobs WHERE owner = ?",
            (owner,),
        )
        key = await self.one(f"SELECT {', '.join(LIMITS)} FROM api_keys WHERE id = ?", (owner,))
        return {
            "running_jobs": int((row or {}).get("running") or 0),
            "queued_jobs": int((row or {}).get("queued") or 0),
            "gpu_seconds": await gpu_seconds(self, owner, now=now, since=since),
            "limits": {name: (key or {}).get(name) for name in LIMITS},
        }

    def usage_by_key(self, *, now: float, since: float) -> list[dict[str, Any]]:
        """Every active key: its id, name, running and queued jobs, GPU seconds since `since` and limits
        (/metrics, at scrape time: a plain read on the read-only connection)."""
        cur = self.reader.execute(
            "SELECT k.id, k.name, k.max_running_jobs, k.max_queued_jobs, k.max_gpu_hours,"
            " COALESCE(u.s, 0) AS gpu_seconds,"
            f" (SELECT COUNT(*) FROM jobs WHERE owner = k.id AND status IN ({ACTIVE_SQL})) AS running,"
            " (SELECT COUNT(*) FROM jobs WHERE owner = k.id AND status = 'queued') AS queued"
            f" FROM api_keys k LEFT JOIN ({_GPU_SECONDS}) u ON u.owner = k.id"
            " WHERE k.revoked_at IS NULL ORDER BY k.created_at, k.id",
            {"now": now, "since": since},
        )
        return [dict(r) for r in cur.fetchall()]

    async def job_runtime(self, job_id: str, *, since: float, now: float) -> float:
        """Seconds the job's runs since `since` have held a slot (the current one up to now)."""
        row = await self.one(
            "SELECT SUM(COALESCE(ended_at, :now) - started_at) AS s FROM job_runs"
            " WHERE job_id = :job AND started_at >= :since",
            {"now": now, "since": since, "job": job_id},
        )
        return float(row["s"] or 0.0) if row else 0.0

    async def queue_positions(self, *, now: float, fair_share_since: float) -> dict[str, int]:
        """1-based position of every queued job, in the order claims take them."""
        rows = await self.all(
            QUEUE_ORDER.replace("SELECT j.*", "SELECT j.id", 1), {"now": now, "since": fair_share_since}
        )
        return {r["id"]: i for i, r in enumerate(rows, start=1)}

"""What /metrics reads from the database at scrape time, and the job duration histogram it keeps
(observability/metrics.py turns these into Prometheus series).

The reads are plain statements on the read-only connection: an indexed GROUP BY over `jobs(status)`, the
active jobs (bounded by the concurrency limit) and the few rows of `job_durations`.
"""

from __future__ import annotations

import json
from typing import Any

from .db import Database, Tx


async def add_job_duration(tx: Tx, status: str, bucket: int, seconds: float, buckets: int) -> None:
    """In the transaction that made a job terminal: count its run time in bucket `bucket` (of `buckets`) of
    the histogram of its final status. Kept in the database: every worker serves the same totals and they
    survive restarts."""
    current = await tx.one("SELECT buckets FROM job_durations WHERE status = ?", (status,))
    counts = json.loads(current["buckets"]) if current else [0] * buckets
    counts[bucket] += 1
    await tx.execute(
        "INSERT INTO job_durations (status, buckets, count, sum) VALUES (?, ?, 1, ?) ON CONFLICT(status)"
        " DO UPDATE SET buckets = excluded.buckets, count = count + 1, sum = sum + excluded.sum",
        (status, json.dumps(counts), seconds),
    )


class MetricsReads(Database):
    def job_status_counts(self) -> dict[str, int]:
        return {
            str(s): int(n)
            for s, n in self.reader.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        }

    def active_job_figures(self, active: tuple[str, ...]) -> list[tuple[str, int, Any, Any]]:
        """(id, GPUs leased, latest train loss, latest tokens/s) of each job in an `active` status."""
        marks = ", ".join("?" * len(active))
        rows = self.reader.execute(
            "SELECT id, gpu_lease, json_extract(metrics, '$.train_loss'),"
            f" json_extract(metrics, '$.tokens_per_second') FROM jobs WHERE status IN ({marks}) ORDER BY ord",
            active,
        ).fetchall()
        return [(r[0], len(json.loads(r[1] or "[]")), r[2], r[3]) for r in rows]

    def delivery_status_counts(self) -> dict[str, int]:
        return {
            str(s): int(n)
            for s, n in self.reader.execute("SELECT status, COUNT(*) FROM webhook_deliveries GROUP BY status")
        }

    def job_durations(self) -> list[tuple[str, list[int], float]]:
        """(status, bucket counts, sum of seconds) per final status."""
        return [
            (str(status), json.loads(buckets), float(total))
            for status, buckets, _count, total in self.reader.execute(
                "SELECT status, buckets, count, sum FROM job_durations ORDER BY status"
            )
        ]

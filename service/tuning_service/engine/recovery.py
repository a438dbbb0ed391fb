"""Start-up recovery: before the service accepts new work, every non-terminal job gets an owner again.

Queued jobs simply stay queued. For each running/cancelling job whose supervising worker is gone:
- its trainer still runs (pid AND process start time match: never the pid alone) -> re-attached and followed;
- it ended while the service was down -> the status its records say (completed/failed/interrupted);
- it asked for `resume_on_restart`, its trainer is gone without a verdict of its own and it has a checkpoint
  -> queued again, to continue from its newest checkpoint (the same path as a resume; a
  `resumed_after_restart` record names the step);
- otherwise -> failed with code `service_restart` (and the last lines of its output).
A pid now held by another process means our trainer is gone: that process is never signalled or reported.
Jobs still followed by another live worker (`uvicorn --workers 2`) are left to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..storage.store import Store
from . import procs
from .states import JobStatus
from .supervisor import Supervisor, owner_alive

log = logging.getLogger("tuning_service.recovery")

# JobManager._requeue_after_restart: queue the (adopted) job again from its checkpoint; False if it may not.
Requeue = Callable[[dict[str, Any]], Awaitable[bool]]


async def recover(store: Store, supervisor: Supervisor, *, requeue: Requeue | None = None) -> list[str]:
    """Adopt and settle every orphaned active job; returns the ids this worker took over."""
    resumed = await _requeue_lost_trainers(store, supervisor, requeue) if requeue is not None else []
    adopted = await supervisor.adopt_orphans(reason="service_restart")
    if adopted or resumed:
        followed = [j for j in adopted if j in supervisor.tracked]
        log.info(
            "recovery: %d job(s) adopted, %d trainer(s) re-attached, %d settled from their records, %d "
            "queued again from a checkpoint (resume_on_restart)",
            len(adopted),
            len(followed),
            len(adopted) - len(followed),
            len(resumed),
        )
    return [*resumed, *adopted]


async def _requeue_lost_trainers(store: Store, supervisor: Supervisor, requeue: Requeue) -> list[str]:
    """The `resume_on_restart` jobs whose trainer is gone: each is adopted first (one worker wins it) and its
    last records are read, so a trainer that completed or failed on its own before it went is judged by its
    records as usual. Those `requeue` refuses are settled as any orphan (`service_restart`)."""
    out: list[str] = []
    now = time.time()
    for row in await store.active_jobs():
        if row["status"] != JobStatus.RUNNING.value or not (row["request"] or {}).get("resume_on_restart"):
            continue
        if row["supervisor_id"] == supervisor.id or owner_alive(
            row["supervisor_id"],
            row["supervisor_heartbeat"],
            supervisor.settings.supervisor_stale_seconds,
            now,
        ):
            continue
        if procs.job_alive(row):
            continue  # still training: adopt_orphans re-attaches it
        if not await store.adopt(
            row["id"], old_supervisor=row["supervisor_id"], new_supervisor=supervisor.id, now=now
        ):
            continue
        out.append(row["id"])
        current = await supervisor.ingest(row["id"], final=True)
        if current is not None and await requeue(current):
            continue
        await supervisor.attach(row["id"], lost_reason="service_restart")
    return out

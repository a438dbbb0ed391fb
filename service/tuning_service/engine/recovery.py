"""Recovery, all of it: before the service accepts new work (`recover`, called by JobManager.start), and
whenever a sibling worker dies (`adopt_orphans`, called by the scheduler every few seconds), every active job
whose supervising worker is gone gets an owner again.

Queued jobs simply stay queued. For each running/cancelling/pausing job whose supervisor is gone:
- its trainer still runs (pid AND process start time match: never the pid alone) -> re-attached and followed;
- it ended while nobody watched -> the status its records say (completed/failed/interrupted);
- it asked for `resume_on_restart`, its trainer is gone without a verdict of its own and it has a checkpoint
  -> queued again, to continue from its newest checkpoint (the same path as a resume; a
  `resumed_after_restart` record names the step);
- otherwise -> failed with code `service_restart` (and the last lines of its output).
A pid now held by another process means our trainer is gone: that process is never signalled or reported.
Jobs still followed by another live worker (`uvicorn --workers 2`) are left to it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from .. import procs
from ..states import JobStatus
from ..storage.store import Store
from .checkpoints import checkpoint_dirs, requeue_fields
from .supervisor import Supervisor

log = logging.getLogger("tuning_service.recovery")


def owner_alive(supervisor_id: str | None, heartbeat: float | None, stale_seconds: float, now: float) -> bool:
    """Is the worker named `supervisor_id` (host:pid:start-ticks:nonce) still following its jobs?"""
    if not supervisor_id:
        return False
    if heartbeat is None or now - heartbeat > stale_seconds:
        return False
    parts = supervisor_id.split(":")
    if len(parts) >= 3 and parts[0] == socket.gethostname():
        try:
            pid, started = int(parts[1]), int(parts[2])
        except ValueError:
            return True
        return procs.is_alive(pid, started)
    return True


async def recover(store: Store, supervisor: Supervisor) -> list[str]:
    """Adopt and settle every orphaned active job; returns the ids this worker took over."""
    resumed = await _requeue_lost_trainers(store, supervisor)
    adopted = await adopt_orphans(store, supervisor)
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


async def adopt_orphans(
    store: Store, supervisor: Supervisor, *, reason: str = "service_restart"
) -> list[str]:
    """Adopt every active job whose supervisor is gone (atomically: one worker wins each job), and follow
    it (supervisor.attach: a live trainer is followed, an ended one settled from its records)."""
    adopted = []
    now = time.time()
    for row in await store.active_jobs():
        if row["id"] in supervisor.tracked or row["supervisor_id"] == supervisor.id:
            continue
        if _followed_elsewhere(row, supervisor, now):
            continue
        if await store.adopt(
            row["id"], old_supervisor=row["supervisor_id"], new_supervisor=supervisor.id, now=now
        ):
            log.info("job %s: adopted (previous supervisor %s)", row["id"], row["supervisor_id"])
            adopted.append(row["id"])
            await supervisor.attach(row["id"], lost_reason=reason)
    return adopted


def _followed_elsewhere(row: dict[str, Any], supervisor: Supervisor, now: float) -> bool:
    return owner_alive(
        row["supervisor_id"], row["supervisor_heartbeat"], supervisor.settings.supervisor_stale_seconds, now
    )


async def _requeue_lost_trainers(store: Store, supervisor: Supervisor) -> list[str]:
    """The `resume_on_restart` jobs whose trainer is gone: each is adopted first (one worker wins it) and its
    last records are read, so a trainer that completed or failed on its own before it went is judged by its
    records as usual. Those that cannot be queued again are settled as any orphan (`service_restart`)."""
    out: list[str] = []
    now = time.time()
    for row in await store.active_jobs():
        if row["status"] != JobStatus.RUNNING.value or not (row["request"] or {}).get("resume_on_restart"):
            continue
        if row["supervisor_id"] == supervisor.id or _followed_elsewhere(row, supervisor, now):
            continue
        executor = supervisor.executor_for(row)
        if executor is None or await executor.alive(row):
            continue  # still training (adopt_orphans re-attaches it), or nothing here can tell
        if not await store.adopt(
            row["id"], old_supervisor=row["supervisor_id"], new_supervisor=supervisor.id, now=now
        ):
            continue
        out.append(row["id"])
        current = await supervisor.ingest(row["id"], final=True)
        if current is not None and await _requeue(store, supervisor, current):
            continue
        await supervisor.attach(row["id"], lost_reason="service_restart")
    return out


async def _requeue(store: Store, supervisor: Supervisor, row: dict[str, Any]) -> bool:
    """Queue an adopted `running` job whose trainer is gone again, to continue from its newest checkpoint, as
    a resume does: if it left no verdict of its own (no terminal record, or only `interrupted`: stopped by an
    outside signal, e.g. the host shutting down) and has a checkpoint. False when nothing changed: the job
    then fails with `service_restart` as usual."""
    term = row["terminal_record"]
    if row["status"] != JobStatus.RUNNING.value or (term is not None and term.get("type") != "interrupted"):
        return False
    if row.get("deadline_requested_at") is not None:
        return False  # it was stopping at its max_runtime_seconds: settled as deadline_exceeded instead
    job_id = row["id"]
    found = await asyncio.to_thread(checkpoint_dirs, supervisor.job_dir(job_id))
    if not found:
        return False
    step = max(found)
    now = time.time()
    async with store.transaction() as tx:
        current = await tx.job(job_id)
        if (
            current is None
            or current["status"] != JobStatus.RUNNING.value
            or current["supervisor_id"] != supervisor.id
            or current["terminal_record"] != term
        ):
            return False
        path = f"checkpoints/{found[step].name}"
        await tx.append(job_id, [("resumed_after_restart", now, {"step": step, "checkpoint": path})])
        message = (
            f"the service restarted and the trainer was gone: queued again to resume from the checkpoint "
            f"of step {step} (resume_on_restart)"
        )
        await tx.transition(
            current,
            JobStatus.QUEUED,
            now=now,
            message=message,
            run_ended_at=await tx.last_trainer_time(job_id),  # not the time the service was down
            **requeue_fields(found[step]),
        )
    log.warning("job %s: trainer lost in the restart; re-queued from checkpoint step %d", job_id, step)
    return True

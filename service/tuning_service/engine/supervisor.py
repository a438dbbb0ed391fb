"""Supervision of trainer runs: launch, follow, stop, finalise, the same whatever runs them.

An executor (executors/: process groups on this machine, or Ray Jobs) starts the trainer and reports on it.
Each tick the supervisor asks it for the run's new records and commits them with the row's progress and read
position in one transaction, enforces the grace period of a stop, and once nothing of the run is left sets
the final status: the trainer's terminal record decides, then the exit status, then why the run was lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuning_trainer.config import Hyperparameters, JobConfig

from .. import procs
from ..files.store import is_file_id
from ..settings import Settings
from ..states import JobStatus
from ..storage.store import Store
from . import credentials
from .checkpoints import checkpoint_dirs, set_aside_checkpoints
from .executors import make_executor
from .executors.base import EXECUTOR_LOST, Executor, Run
from .executors.local import LocalExecutor
from .lineage import INIT_ADAPTER
from .outcome import decide_outcome, job_error, progress_fields
from .retry import retry_plan

log = logging.getLogger("tuning_service.supervisor")

HEARTBEAT_SECONDS = 1.0
LOG_TAIL_LINES = 20


def make_identity() -> str:
    """host:pid:start-ticks:nonce: the pid and start time tell another worker on this host if we live."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{procs.start_time(pid)}:{os.urandom(3).hex()}"


def trainer_config(settings: Settings, row: dict[str, Any], job_dir: Path) -> dict[str, Any]:
    """The trainer's config.json for a stored job. The job was validated when it was created (and its
    hyperparameters are the stored ones: requested, or resolved by an earlier run): nothing is parsed again,
    the values are only put in the trainer's own shape (tuning_trainer.config.JobConfig)."""
    req = row["request"]

    def resolve(p: str | None) -> str | None:
        if p is None:
            return None
        if is_file_id(p):  # an uploaded file: the stored copy
            return str(settings.data_dir / "files" / p)
        return str((settings.files_root / p).resolve())

    cfg = JobConfig.model_construct(
        model=req["model"],
        training_file=resolve(req["training_file"]),
        validation_file=resolve(req.get("validation_file")),
        output_dir=str(job_dir),
        method=req["method"],
        adapter=req.get("adapter", "qlora"),
        seed=req["seed"],
        # from_checkpoint: the adapter copied into the job's folder when it was created (facade.create).
        init_adapter=str(job_dir / INIT_ADAPTER) if req.get("from_checkpoint") else None,
        # A resumed job continues from its newest checkpoint (set by JobManager.resume).
        resume_from=row.get("resume_from"),
        hyperparameters=Hyperparameters.model_construct(**row["hyperparameters"]),
    )
    out = cfg.to_dict()
    # Stored as validated JSON already (the create body's own models): copied, not rebuilt.
    out["integrations"] = list(req.get("integrations") or [])
    out["mlflow_tracking_uri"] = settings.mlflow_tracking_uri or None
    return out


class Supervisor:
    def __init__(self, settings: Settings, store: Store, notify: Callable[[], None]) -> None:
        self.settings = settings
        self.store = store
        self.notify = notify
        self.id = make_identity()
        # New runs go to the configured executor; a run is always followed by the one that started it.
        self.executor = make_executor(settings, store)
        self._local = self.executor if isinstance(self.executor, LocalExecutor) else LocalExecutor(settings)
        self.tracked: dict[str, Run] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_heartbeat = 0.0
        # Called when a job of ours ends: its slot (and GPUs) are free now (the scheduler sets this).
        self.on_finished: Callable[[], None] | None = None

    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def executor_for(self, row: dict[str, Any]) -> Executor | None:
        """The executor that started the job's current run (None: one this service does not run)."""
        name = row.get("executor") or LocalExecutor.name
        if name == self.executor.name:
            return self.executor
        return self._local if name == LocalExecutor.name else None

    async def request_stop(self, row: dict[str, Any]) -> None:
        """A cancel or pause: ask the run to stop (the trainer checkpoints first); this supervisor enforces
        the grace period and finalises."""
        executor = self.executor_for(row)
        if executor is not None:
            await executor.stop(row)

    # ---- loop --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tuning-supervisor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        # Hand our jobs back (the trainers keep running): the next service process re-attaches at once.
        await self.store.release_jobs(self.id)
        self.tracked.clear()
        await self.executor.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervision tick failed")
            await asyncio.sleep(self.settings.poll_interval_seconds)

    async def tick(self) -> None:
        now = time.time()
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            await self.store.heartbeat(self.id, now)
            self._last_heartbeat = now
        for job_id in list(self.tracked):
            try:
                await self.step(job_id)
            except Exception:
                log.exception("supervising job %s failed", job_id)

    # ---- launching and attaching -------------------------------------------------------------------------

    async def launch(self, row: dict[str, Any]) -> None:
        """Start the trainer of a job this worker has just claimed (status running)."""
        job_id = row["id"]
        job_dir = self.job_dir(job_id)
        executor = self.executor
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            config = trainer_config(self.settings, row, job_dir)
            planned = {"executor": executor.name, **executor.plan(row)}
            async with self.store.transaction() as tx:
                await tx.update(job_id, config=config, **planned)
            row = {**row, **planned}
            environment = await self.store.key_environment(row["owner"])
            await asyncio.to_thread(credentials.write, job_dir, environment)
            fields, handle = await executor.launch(row, job_dir, config)
        except Exception as exc:
            log.exception("job %s: could not launch the trainer", job_id)
            await asyncio.to_thread(credentials.remove, job_dir)
            await self._fail_launch(job_id, f"could not launch the trainer: {exc}")
            return
        async with self.store.transaction() as tx:
            if fields:
                await tx.update(job_id, **fields)
            current = await tx.job(job_id)
        assert current is not None
        self.tracked[job_id] = Run(job_id, handle=handle, deadline_at=await self._deadline(current))
        if current["status"] in (JobStatus.CANCELLING.value, JobStatus.PAUSING.value):
            # A cancel (or pause) arrived between the claim and now, before the run could be signalled.
            await executor.stop(current)
        self.notify()

    async def _fail_launch(self, job_id: str, message: str) -> None:
        now = time.time()
        async with self.store.transaction() as tx:
            row = await tx.job(job_id)
            if row is None or JobStatus(row["status"]).is_terminal():
                return
            error = job_error("launch_failed", message)
            new = {
                JobStatus.CANCELLING.value: JobStatus.CANCELLED,
                JobStatus.PAUSING.value: JobStatus.PAUSED,
            }.get(row["status"], JobStatus.FAILED)
            await tx.transition(
                row, new, now=now, message=message, error=error if new == JobStatus.FAILED else None
            )
        self.notify()

    async def attach(self, job_id: str, *, lost_reason: str = "service_restart") -> None:
        """Follow a job this worker has adopted: re-attach to a live run, or finalise one that ended while
        nobody was watching (its records decide; without a terminal record it failed with `lost_reason`)."""
        row = await self.store.get_job(job_id)
        if row is None or JobStatus(row["status"]).is_terminal():
            return
        run = Run(job_id)
        executor = self.executor_for(row)
        if executor is None:
            run.lost = (
                EXECUTOR_LOST,
                f"the job ran on the {row['executor']} executor and this service runs "
                f"TUNING_EXECUTOR={self.executor.name}: nothing follows it",
            )
            await self.finalize(run)
            return
        if await executor.alive(row):
            run.deadline_at = await self._deadline(row)
            self.tracked[job_id] = run
            log.info("job %s: re-attached to its run (%s executor)", job_id, executor.name)
            return
        await executor.observe(run, row, time.time())  # how it ended, where the executor can tell
        await self.finalize(run, lost_reason=lost_reason)

    # ---- following ---------------------------------------------------------------------------------------

    async def ingest(self, job_id: str, *, final: bool = False) -> dict[str, Any] | None:
        """Turn the run's new output into records, committing them together with the new read position and
        the job's progress. A concurrent reader that already moved the position wins and this read is
        discarded, so no record is ever stored twice."""
        row = await self.store.get_job(job_id)
        if row is None or JobStatus(row["status"]).is_terminal():
            return row
        executor = self.executor_for(row)
        if executor is None:
            return row
        records, position = await executor.read(row, self.job_dir(job_id), final=final)
        if not position:
            return row
        fields = progress_fields(row, records)
        async with self.store.transaction() as tx:
            cur = await tx.job(job_id)
            if (
                cur is None
                or JobStatus(cur["status"]).is_terminal()
                or any(cur[k] != row[k] for k in position)
            ):
                return cur
            await tx.append(job_id, records)
            await tx.update(job_id, **position, **fields)
            row = await tx.job(job_id)
        self.notify()
        return row

    async def step(self, job_id: str) -> None:
        run = self.tracked[job_id]
        row = await self.ingest(job_id)
        executor = None if row is None else self.executor_for(row)
        if (
            row is None
            or executor is None
            or row["supervisor_id"] != self.id
            or JobStatus(row["status"]).is_terminal()
        ):
            self._untrack(job_id, executor)
            return
        now = time.time()
        alive = await executor.observe(run, row, now)
        if alive and run.deadline_at is not None and now >= run.deadline_at:
            row = await self._stop_at_deadline(row, executor, now)
        grace = self.settings.cancel_grace_seconds
        overdue = False
        if row["status"] == JobStatus.CANCELLING.value and row["cancel_requested_at"] is not None:
            overdue = now - row["cancel_requested_at"] >= grace
        elif row["status"] == JobStatus.PAUSING.value and row.get("pause_requested_at") is not None:
            overdue = now - row["pause_requested_at"] >= grace
        elif row["status"] == JobStatus.RUNNING.value and row.get("deadline_requested_at") is not None:
            overdue = now - row["deadline_requested_at"] >= grace
        if run.ended_at is not None and now - run.ended_at >= grace:
            overdue = (
                True  # the main process is gone; what is left of the run gets the same grace, then SIGKILL
            )
        if alive and overdue and (run.kill_sent_at is None or now - run.kill_sent_at >= 1.0):
            log.warning("job %s: still running %.1f s after the stop was asked; forcing it", job_id, grace)
            await executor.stop(row, force=True)
            run.kill_sent_at = now
        if not alive:
            await self.finalize(run)

    async def _deadline(self, row: dict[str, Any]) -> float | None:
        """When the job's max_runtime_seconds runs out (its runs since it was created or resumed by hand
        count, this one included), or None without a limit."""
        limit = (row["request"] or {}).get("max_runtime_seconds")
        if not limit:
            return None
        now = time.time()
        since = row.get("runtime_since") or row["created_at"]
        used = await self.store.job_runtime(row["id"], since=since, now=now)
        return now + float(limit) - used

    async def _stop_at_deadline(self, row: dict[str, Any], executor: Executor, now: float) -> dict[str, Any]:
        """max_runtime_seconds is up: ask the trainer to checkpoint and stop (once), as a pause does; the
        outcome is `failed` with `deadline_exceeded` (outcome.py)."""
        async with self.store.transaction() as tx:
            cur = await tx.job(row["id"])
            if (
                cur is None
                or cur["status"] != JobStatus.RUNNING.value
                or cur.get("deadline_requested_at") is not None
            ):
                return cur or row
            limit = (cur["request"] or {}).get("max_runtime_seconds")
            await tx.update(row["id"], deadline_requested_at=now)
            line = f"max_runtime_seconds ({limit} s) reached: the trainer is asked to checkpoint and stop"
            await tx.append(row["id"], [("log", now, {"line": line})])
            cur = await tx.job(row["id"])
        assert cur is not None
        log.info("job %s: %s", row["id"], line)
        await executor.stop(cur)
        self.notify()
        return cur

    def _untrack(self, job_id: str, executor: Executor | None) -> None:
        self.tracked.pop(job_id, None)
        credentials.remove(self.job_dir(job_id))
        if executor is not None:
            executor.forget(job_id)

    async def finalize(self, run: Run, *, lost_reason: str | None = None) -> None:
        """Nothing of the run is left: read what is left of its output and set the final status."""
        job_id = run.job_id
        row = await self.ingest(job_id, final=True)
        executor = None if row is None else self.executor_for(row)
        tail: list[str] = []
        if row is not None and executor is not None:
            tail = await executor.log_tail(row, self.job_dir(job_id), LOG_TAIL_LINES)
        if run.note:
            tail = [*tail, run.note][-LOG_TAIL_LINES:]
        reason, lost_message = run.lost if run.lost is not None else (lost_reason, None)
        found = await asyncio.to_thread(checkpoint_dirs, self.job_dir(job_id))  # for a retry
        now = time.time()
        async with self.store.transaction() as tx:
            row = await tx.job(job_id)
            if row is None or JobStatus(row["status"]).is_terminal() or row["supervisor_id"] != self.id:
                self._untrack(job_id, executor)
                return
            status, message, fields = decide_outcome(
                row,
                exit_code=run.exit_code,
                killed_by_us=run.kill_sent_at is not None,
                log_tail=tail,
                lost_reason=reason,
                lost_message=lost_message,
                never_started=run.never_started,
                grace_seconds=self.settings.cancel_grace_seconds,
            )
            if run.exit_code is not None:
                fields["exit_code"] = run.exit_code
            # A run that ended while nobody watched (the service was down) held its slot until its last
            # record, not until now: its GPU time and runtime stop there.
            unwatched = lost_reason is not None and run.ended_at is None
            fields["run_ended_at"] = await tx.last_trainer_time(job_id) if unwatched else run.ended_at
            plan = retry_plan(row, fields.get("error") or {}, found) if status == JobStatus.FAILED else None
            if plan is not None:
                # The failure is told (its status record, then the retry), then the job is queued again.
                if plan.discard_checkpoints:
                    await asyncio.to_thread(
                        set_aside_checkpoints, self.job_dir(job_id), int(row["retries"]) + 1
                    )
                retry_fields, record, retry_message = plan.fields, plan.record, plan.message
                await tx.append(job_id, [("log", now, {"line": f"failed: {message}"})])
                await tx.append(job_id, [("retry", now, record)])
                status, message = JobStatus.QUEUED, retry_message
                await tx.transition(
                    row, status, now=now, message=message, run_ended_at=fields["run_ended_at"], **retry_fields
                )
            else:
                await tx.transition(row, status, now=now, message=message, **fields)
        self._untrack(job_id, executor)
        log.info("job %s: %s (%s)", job_id, status.value, message)
        self.notify()
        if self.on_finished is not None:
            self.on_finished()  # the scheduler: a slot is free (and a retried job waits for one)

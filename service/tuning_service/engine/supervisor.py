"""Supervision of trainer processes: launch, follow, cancel, finalise.

The trainer runs as `python -m accelerate.commands.launch [flags] -m tuning_trainer --config
<job>/config.json`, started from an argument list in its own session (so it is its own process group and
outlives the service).
Each tick the supervisor tails the job's events.jsonl and output.log from the byte offsets stored in the job
row and commits the new records and the row's progress in one transaction. The job ends when the whole
process group is gone; the trainer's terminal record (and the exit status) decides how.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning_trainer.config import Hyperparameters, JobConfig
from tuning_trainer.launch import launch_flags

from .. import procs
from ..files.store import is_file_id
from ..settings import Settings
from ..states import JobStatus
from ..storage.store import Store
from . import tailer
from .lineage import INIT_ADAPTER
from .outcome import decide_outcome, job_error, progress_fields

log = logging.getLogger("tuning_service.supervisor")

HEARTBEAT_SECONDS = 1.0
LOG_TAIL_LINES = 20


def make_identity() -> str:
    """host:pid:start-ticks:nonce: the pid and start time tell another worker on this host if we live."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{procs.start_time(pid)}:{os.urandom(3).hex()}"


def launch_command(settings: Settings, row: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The command up to (not including) `--config PATH`, and the trainer's environment: one process per
    leased GPU (DDP, or FSDP when the job asks), or on CPU `cpu_processes` of them
    (tuning_trainer/launch.py)."""
    lease = list(row["gpu_lease"] or [])
    env = dict(os.environ)  # HF_HUB_OFFLINE and the like are inherited
    env["TUNING_MODELS_DIR"] = str(settings.models_dir)
    env["PYTHONUNBUFFERED"] = "1"
    if lease:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(lease)
    if settings.trainer_command:
        cmd = json.loads(settings.trainer_command)
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
            raise ValueError("TUNING_TRAINER_COMMAND must be a non-empty JSON list of strings")
        return cmd, env
    threads = settings.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, settings.max_concurrent_jobs))
    flags, extra_env = launch_flags(
        gpus=len(lease),
        distributed=(row["request"] or {}).get("distributed", "ddp"),
        cpu_processes=settings.cpu_processes,
        threads=threads,
    )
    env.update(extra_env)
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "-m", "tuning_trainer"], env


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
    return cfg.to_dict()


@dataclass
class Tracked:
    job_id: str
    popen: subprocess.Popen[bytes] | None = None  # None for a trainer started by an earlier service process
    exit_code: int | None = None
    leader_gone_at: float | None = None
    kill_sent_at: float | None = None


class Supervisor:
    def __init__(self, settings: Settings, store: Store, notify: Callable[[], None]) -> None:
        self.settings = settings
        self.store = store
        self.notify = notify
        self.id = make_identity()
        self.tracked: dict[str, Tracked] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_heartbeat = 0.0
        # Called when a job of ours ends: its slot (and GPUs) are free now (the scheduler sets this).
        self.on_finished: Callable[[], None] | None = None

    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

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
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            config = trainer_config(self.settings, row, job_dir)
            (job_dir / "config.json").write_text(
                json.dumps(config, indent=2, sort_keys=True), encoding="utf-8"
            )
            prefix, env = launch_command(self.settings, row)
            cmd = [*prefix, "--config", str(job_dir / "config.json")]
            with open(job_dir / "output.log", "ab") as out:
                popen = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=str(self.settings.files_root),
                    env=env,
                    start_new_session=True,  # own session + process group: signalled as a group, outlives us
                    close_fds=True,
                )
        except Exception as exc:
            log.exception("job %s: could not launch the trainer", job_id)
            await self._fail_launch(job_id, f"could not launch the trainer: {exc}")
            return
        started = procs.start_time(popen.pid)
        async with self.store.transaction() as tx:
            await tx.update(job_id, pid=popen.pid, pgid=popen.pid, proc_start_time=started, config=config)
            current = await tx.job(job_id)
        assert current is not None
        self.tracked[job_id] = Tracked(job_id, popen=popen)
        log.info("job %s: trainer started (pid %s): %s", job_id, popen.pid, " ".join(cmd))
        if current["status"] in (JobStatus.CANCELLING.value, JobStatus.PAUSING.value):
            # A cancel (or pause) arrived between the claim and now, before anyone knew the pid.
            procs.signal_job(current, signal.SIGTERM)
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
        """Follow a job this worker has adopted: re-attach to a live trainer, or finalise one that ended while
        nobody was watching (its records decide; without a terminal record it failed with `lost_reason`)."""
        row = await self.store.get_job(job_id)
        if row is None or JobStatus(row["status"]).is_terminal():
            return
        if procs.job_alive(row):
            self.tracked[job_id] = Tracked(job_id)
            log.info("job %s: re-attached to trainer pid %s", job_id, row["pid"])
            return
        if procs.pid_reused(row["pid"], row["proc_start_time"]):
            log.warning("job %s: pid %s now belongs to another process; not touching it", job_id, row["pid"])
        await self.finalize(Tracked(job_id, leader_gone_at=time.time()), lost_reason=lost_reason)

    # ---- following ---------------------------------------------------------------------------------------

    async def ingest(self, job_id: str, *, final: bool = False) -> dict[str, Any] | None:
        """Turn new complete lines of events.jsonl and output.log into records, committing them together with
        the new offsets and the job's progress. A concurrent reader that already moved the offsets wins and
        this read is discarded, so no record is ever stored twice."""
        row = await self.store.get_job(job_id)
        if row is None or JobStatus(row["status"]).is_terminal():
            return row
        job_dir = self.job_dir(job_id)
        ev_lines, ev_off = await asyncio.to_thread(
            tailer.read_lines, job_dir / "events.jsonl", row["events_offset"], final=final
        )
        log_lines, log_off = await asyncio.to_thread(
            tailer.read_lines, job_dir / "output.log", row["log_offset"], final=final
        )
        if ev_off == row["events_offset"] and log_off == row["log_offset"]:
            return row
        events = tailer.event_records(ev_lines, row["events_lines"] + 1)
        fields = progress_fields(row, events)
        async with self.store.transaction() as tx:
            cur = await tx.job(job_id)
            if (
                cur is None
                or JobStatus(cur["status"]).is_terminal()
                or cur["events_offset"] != row["events_offset"]
                or cur["log_offset"] != row["log_offset"]
            ):
                return cur
            await tx.append(job_id, events + tailer.log_records(log_lines))
            await tx.update(
                job_id,
                events_offset=ev_off,
                events_lines=row["events_lines"] + len(ev_lines),
                log_offset=log_off,
                **fields,
            )
            row = await tx.job(job_id)
        self.notify()
        return row

    async def step(self, job_id: str) -> None:
        t = self.tracked[job_id]
        row = await self.ingest(job_id)
        if row is None or row["supervisor_id"] != self.id or JobStatus(row["status"]).is_terminal():
            self.tracked.pop(job_id, None)
            return
        now = time.time()
        if t.leader_gone_at is None:
            if t.popen is not None:
                rc = t.popen.poll()  # also reaps it
                if rc is not None:
                    t.exit_code, t.leader_gone_at = rc, now
            elif not procs.is_alive(row["pid"], row["proc_start_time"]):
                t.leader_gone_at = now
        grace = self.settings.cancel_grace_seconds
        overdue = False
        if row["status"] == JobStatus.CANCELLING.value and row["cancel_requested_at"] is not None:
            overdue = now - row["cancel_requested_at"] >= grace
        elif row["status"] == JobStatus.PAUSING.value and row.get("pause_requested_at") is not None:
            overdue = now - row["pause_requested_at"] >= grace
        if t.leader_gone_at is not None and now - t.leader_gone_at >= grace:
            overdue = True  # the launcher is gone; leftovers of its group get the same grace, then SIGKILL
        alive = t.leader_gone_at is None or bool(row["pgid"] and procs.group_members(row["pgid"]))
        if alive and overdue and (t.kill_sent_at is None or now - t.kill_sent_at >= 1.0):
            log.warning(
                "job %s: process group %s still alive after %.1f s; sending SIGKILL",
                job_id,
                row["pgid"],
                grace,
            )
            procs.signal_job(row, signal.SIGKILL)
            t.kill_sent_at = now
        if not alive:
            await self.finalize(t)

    async def finalize(self, t: Tracked, *, lost_reason: str | None = None) -> None:
        """The trainer's whole group is gone: read what is left and set the final status."""
        job_id = t.job_id
        await self.ingest(job_id, final=True)
        tail = await asyncio.to_thread(tailer.log_tail, self.job_dir(job_id) / "output.log", LOG_TAIL_LINES)
        now = time.time()
        async with self.store.transaction() as tx:
            row = await tx.job(job_id)
            if row is None or JobStatus(row["status"]).is_terminal() or row["supervisor_id"] != self.id:
                self.tracked.pop(job_id, None)
                return
            status, message, fields = decide_outcome(
                row,
                exit_code=t.exit_code,
                killed_by_us=t.kill_sent_at is not None,
                log_tail=tail,
                lost_reason=lost_reason,
                grace_seconds=self.settings.cancel_grace_seconds,
            )
            if t.exit_code is not None:
                fields["exit_code"] = t.exit_code
            await tx.transition(row, status, now=now, message=message, **fields)
        self.tracked.pop(job_id, None)
        log.info("job %s: %s (%s)", job_id, status.value, message)
        self.notify()
        if self.on_finished is not None:
            self.on_finished()

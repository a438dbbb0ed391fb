"""The local executor: trainers as process groups on this machine.

The trainer runs as `python -m accelerate.commands.launch [flags] -m tuning_trainer --config
<job>/config.json`, started from an argument list in its own session (so it is its own process group and
outlives the service). Its records are read from events.jsonl and output.log in the job folder, from the byte
offsets stored in the job row. A run is over when its whole process group is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tuning_trainer.launch import launch_flags

from ... import procs
from ...errors import APIError
from ...settings import Settings
from .. import tailer
from ..tailer import Record
from .base import Executor, Run

log = logging.getLogger("tuning_service.executor.local")


def trainer_argv(
    settings: Settings, *, gpus: int, distributed: str, threads: int
) -> tuple[list[str], dict[str, str]]:
    """The trainer's command up to (not including) `--config PATH`, and the environment it adds: one process
    per GPU (DDP, or FSDP when the job asks), or on CPU `cpu_processes` of them (tuning_trainer/launch.py).
    TUNING_TRAINER_COMMAND replaces the command (tests: a fake trainer). Shared by both executors."""
    if settings.trainer_command:
        cmd = json.loads(settings.trainer_command)
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
            raise ValueError("TUNING_TRAINER_COMMAND must be a non-empty JSON list of strings")
        return cmd, {}
    flags, extra_env = launch_flags(
        gpus=gpus, distributed=distributed, cpu_processes=settings.cpu_processes, threads=threads
    )
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "-m", "tuning_trainer"], extra_env


def launch_command(settings: Settings, row: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The local command up to `--config PATH` and the trainer's whole environment, for a job holding the GPUs
    of its lease (none: CPU, the machine's threads divided among the concurrent jobs)."""
    lease = list(row["gpu_lease"] or [])
    env = dict(os.environ)  # HF_HUB_OFFLINE and the like are inherited
    env["TUNING_MODELS_DIR"] = str(settings.models_dir)
    env["PYTHONUNBUFFERED"] = "1"
    if lease:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(lease)
    threads = settings.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, settings.max_concurrent_jobs))
    argv, extra_env = trainer_argv(
        settings,
        gpus=len(lease),
        distributed=(row["request"] or {}).get("distributed", "ddp"),
        threads=threads,
    )
    env.update(extra_env)
    return argv, env


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def admit_gpus(self, num_gpus: int) -> int:
        """No more GPUs than this service leases (a service without GPUs runs 1 process on CPU)."""
        have = len(self.settings.gpus)
        if num_gpus > max(1, have):
            where = (
                f"this service leases {have} GPUs (TUNING_GPUS)"
                if have
                else "this service has no GPUs (it trains on CPU)"
            )
            raise APIError(
                422,  # a valid value this server cannot honour (another could): not `invalid_value`
                "not_enough_gpus",
                f"num_gpus {num_gpus} is more than {where}: ask for at most {max(1, have)}",
                param="num_gpus",
            )
        return num_gpus if have else 0  # the GPUs it leases; on a CPU machine, none

    def gpus_to_lease(self) -> list[str]:
        return list(self.settings.gpus)

    def plan(self, row: dict[str, Any]) -> dict[str, Any]:
        """After a run of another executor (whose trainer also appended to the job's files, unread by offsets:
        its records came another way), this run's records start at the files' current ends."""
        if (row.get("executor") or self.name) == self.name:
            return {}
        job_dir = self.settings.jobs_dir / row["id"]
        events, logs = job_dir / "events.jsonl", job_dir / "output.log"
        ev_bytes = events.read_bytes() if events.exists() else b""
        return {
            "events_offset": len(ev_bytes),
            "events_lines": ev_bytes.count(b"\n"),
            "log_offset": logs.stat().st_size if logs.exists() else 0,
        }

    async def launch(self, row: dict[str, Any], job_dir: Path, config: dict[str, Any]) -> tuple[dict, Any]:
        config_path = job_dir / "config.json"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        prefix, env = launch_command(self.settings, row)
        cmd = [*prefix, "--config", str(config_path)]
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
        log.info("job %s: trainer started (pid %s): %s", row["id"], popen.pid, " ".join(cmd))
        started = procs.start_time(popen.pid)
        return {"pid": popen.pid, "pgid": popen.pid, "proc_start_time": started}, popen

    async def alive(self, row: dict[str, Any]) -> bool:
        if procs.job_alive(row):
            return True
        if procs.pid_reused(row["pid"], row["proc_start_time"]):
            log.warning(
                "job %s: pid %s now belongs to another process; not touching it", row["id"], row["pid"]
            )
        return False

    async def observe(self, run: Run, row: dict[str, Any], now: float) -> bool:
        if run.ended_at is None:
            if run.handle is not None:
                rc = run.handle.poll()  # also reaps it
                if rc is not None:
                    run.exit_code, run.ended_at = rc, now
            elif not procs.is_alive(row["pid"], row["proc_start_time"]):
                run.ended_at = now
        # The launcher may be gone while the training child still runs: the run lasts as long as its group.
        return run.ended_at is None or bool(row["pgid"] and procs.group_members(row["pgid"]))

    async def read(self, row: dict[str, Any], job_dir: Path, *, final: bool) -> tuple[list[Record], dict]:
        ev_lines, ev_off = await asyncio.to_thread(
            tailer.read_lines, job_dir / "events.jsonl", row["events_offset"], final=final
        )
        log_lines, log_off = await asyncio.to_thread(
            tailer.read_lines, job_dir / "output.log", row["log_offset"], final=final
        )
        if ev_off == row["events_offset"] and log_off == row["log_offset"]:
            return [], {}
        records = tailer.event_records(ev_lines, row["events_lines"] + 1) + tailer.log_records(log_lines)
        return records, {
            "events_offset": ev_off,
            "events_lines": row["events_lines"] + len(ev_lines),
            "log_offset": log_off,
        }

    async def stop(self, row: dict[str, Any], *, force: bool = False) -> bool:
        # The whole group (accelerate launch does not forward signals), after checking pid + start time.
        return procs.signal_job(row, signal.SIGKILL if force else signal.SIGTERM)

    async def log_tail(self, row: dict[str, Any], job_dir: Path, n: int) -> list[str]:
        return await asyncio.to_thread(tailer.log_tail, job_dir / "output.log", n)

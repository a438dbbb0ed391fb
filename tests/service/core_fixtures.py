"""Helpers for the service-core tests (store, supervisor, scheduler, recovery, manager): settings pointing at
a temporary data directory and the fake trainer, and small async waiting helpers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psutil

from tuning_service.engine.facade import JobManager
from tuning_service.schema.jobs import CreateTuningRequest
from tuning_service.settings import Settings

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
T = TypeVar("T")


TRAIN_ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def make_settings(root: Path, **overrides: Any) -> Settings:
    """Settings for a manager on `root` (the files root, with a valid `train.jsonl`) and the fake trainer."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "train.jsonl").exists():
        (root / "train.jsonl").write_text(TRAIN_ROW * 4, encoding="utf-8")
    values: dict[str, Any] = {
        "data_dir": root / "data",
        "files_root": root,
        "models_dir": root / "models",
        "api_keys": [],
        "max_concurrent_jobs": 4,
        "gpus": [],
        "cancel_grace_seconds": 1.0,
        "poll_interval_seconds": 0.02,
        "schedule_interval_seconds": 0.05,
        "supervisor_stale_seconds": 15.0,
        "trainer_command": json.dumps([sys.executable, str(FAKE_TRAINER)]),
    }
    values.update(overrides)
    return Settings(**values)


def request(mode: str = "complete", **extra: Any) -> CreateTuningRequest:
    """A create body for the fake trainer (`model` names its behaviour: `mode` is e.g. "complete" or
    "crash?steps=3"), validated as the route validates it."""
    body: dict[str, Any] = {
        "model": f"fake:{mode}",
        "training_file": "train.jsonl",
        "validation_file": None,
        "hyperparameters": {"epochs": 1},
        "method": "lora",
        "suffix": None,
        "seed": 7,
        "metadata": {},
    }
    body.update(extra)
    return CreateTuningRequest.model_validate(body)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def wait_until(pred: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or pred}")
        await asyncio.sleep(0.02)


async def wait_status(
    m: JobManager, job_id: str, owner: str, statuses: set[str] | str, timeout: float = 15.0
) -> dict[str, Any]:
    wanted = {statuses} if isinstance(statuses, str) else statuses
    job: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal job
        job = await m.get(job_id, owner=owner)
        return job["status"] in wanted

    await wait_until(done, timeout, f"job {job_id} to reach {sorted(wanted)}")
    return job


async def all_events(m: JobManager, job_id: str, owner: str) -> list[dict[str, Any]]:
    records, _ = await (await m.records(job_id, owner=owner)).page(after=0, limit=100_000)
    return records


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, by psutil (independent of the service's /proc code)."""
    pids = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                pids.append(p.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return pids


def kill_group(pgid: int | None) -> None:
    """Test clean-up: make sure no trainer outlives its test."""
    if not pgid:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def launches(settings: Settings, job_id: str) -> list[str]:
    path = settings.jobs_dir / job_id / "launches.txt"
    return path.read_text().splitlines() if path.exists() else []

"""Shared pieces of the reliability suite: real services (uvicorn subprocesses) on the light files root,
driven by the fake trainer (tests/service/fake_trainer.py) unless a test needs the real one."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import FAKE_TRAINER
from tests.support.server import ServiceEnv, ServiceProcess

FAKE_COMMAND = json.dumps([sys.executable, str(FAKE_TRAINER)])
TERMINAL = {"succeeded", "failed", "cancelled"}


def fake_env(**extra: str) -> dict[str, str]:
    """Service settings that launch the fake trainer; `model` picks its behaviour (fake:<mode>?...)."""
    return {"TUNING_TRAINER_COMMAND": FAKE_COMMAND, "TUNING_CANCEL_GRACE_SECONDS": "2", **extra}


def fake_job(svc: ServiceProcess, mode: str, key: str | None = None, **body: Any) -> dict[str, Any]:
    body.setdefault("training_file", "data/train.jsonl")
    return svc.create_job(**({"key": key} if key else {}), model=f"fake:{mode}", **body)


@pytest.fixture(scope="module")
def fake_service(light_service_env: ServiceEnv) -> Iterator[ServiceProcess]:
    """One real service per module that runs the fake trainer (2 at a time)."""
    svc = light_service_env.start("fake", extra_env=fake_env(TUNING_MAX_CONCURRENT_JOBS="2"))
    yield svc
    svc.shutdown()


def launches(svc: ServiceProcess, job_id: str) -> list[str]:
    path = Path(svc.data_dir, "jobs", job_id, "launches.txt")
    return path.read_text().splitlines() if path.exists() else []

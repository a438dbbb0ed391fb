"""Helpers for the trainer tests: launch the trainer for real and read what it wrote."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from tests.conftest import REPO_ROOT, accelerate_cmd
from tuning_trainer.records import TrainerRecord


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1"
    )
    return env


def start(*args: str) -> subprocess.Popen[str]:
    """Start `accelerate launch [CPU flags] -m tuning_trainer ARGS` in its own process group."""
    return subprocess.Popen(
        accelerate_cmd(*args),
        cwd=REPO_ROOT,
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 480) -> subprocess.CompletedProcess[str]:
    """Wait for a launched trainer; on timeout kill its whole process group (the launcher does not forward
    signals, so killing the launcher alone would orphan the training child)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"trainer timed out after {timeout}s; stdout tail:\n{stdout[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def launch(*args: str, timeout: float = 480) -> subprocess.CompletedProcess[str]:
    """`accelerate launch [CPU flags] -m tuning_trainer ARGS`, waited for."""
    return finish(start(*args), timeout)


def run_module(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m tuning_trainer ARGS` without the launcher: the child's own exit code is visible."""
    return subprocess.run(
        [sys.executable, "-m", "tuning_trainer", *args],
        cwd=REPO_ROOT,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# What a run writes must be exactly the protocol's records (tuning_trainer/records.py), in every test that
# reads them: strict, no field missing or unknown.
PROTOCOL: TypeAdapter[Any] = TypeAdapter(TrainerRecord)


def events(out: Path) -> list[dict[str, Any]]:
    path = out / "events.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for record in records:
        PROTOCOL.validate_python(record)
    return records


def of_type(records: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == type_]


@pytest.fixture(scope="session")
def train_file() -> Path:
    return REPO_ROOT / "data" / "train.jsonl"


@pytest.fixture(scope="session")
def valid_file() -> Path:
    return REPO_ROOT / "data" / "valid.jsonl"

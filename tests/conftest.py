"""Fixtures shared by the whole suite.

Nothing here downloads anything: the tiny model is built locally, once per test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests never reach a hub: a hub id fails fast instead of retrying for ~25 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CPU_ACCELERATE_FLAGS = [
    "--cpu",
    "--num_processes",
    "1",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--num_cpu_threads_per_process",
    "2",
]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, warmed-up Llama model with a local tokenizer and chat template (built once per session)."""
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run(
        [sys.executable, "-m", "tuning_trainer.tiny", "--out", str(out)],
        check=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    return out


def accelerate_cmd(*trainer_args: str) -> list[str]:
    """The real launch command on CPU: accelerate launch [CPU flags] -m tuning_trainer ARGS."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *CPU_ACCELERATE_FLAGS,
        "-m",
        "tuning_trainer",
        *trainer_args,
    ]

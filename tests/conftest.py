"""Fixtures shared by the whole suite.

Nothing here downloads anything: the tiny model is built locally, once per test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuning_trainer.launch import cpu_launch_flags

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests never reach a hub: a hub id fails fast instead of retrying for ~25 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One torch thread per trainer in tests: the tiny model gains nothing from a second one, and with the test
# process, a service and maybe a second pytest worker sharing the 2 cores, OpenMP's spinning threads made a
# 75-step run take 40 s instead of 23 s (measured). TUNING_CPU_THREADS does the same for test services.
CPU_ACCELERATE_FLAGS = cpu_launch_flags(1)
os.environ.setdefault("TUNING_CPU_THREADS", "1")


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
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # see CPU_ACCELERATE_FLAGS
        timeout=900,  # ~10 s on a quiet machine; generous for a loaded one
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


# ---- the service under test (tests/support/server.py) ----------------------------------------------------


@pytest.fixture(scope="session")
def service_env(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, repo_root: Path):
    """Files root with the repo's data/train.jsonl + data/valid.jsonl, and models_dir holding `tiny-llama`."""
    import shutil

    from tests.support.server import ServiceEnv

    root = tmp_path_factory.mktemp("service")
    files_root = root / "files"
    (files_root / "data").mkdir(parents=True)
    for name in ("train.jsonl", "valid.jsonl", "preference_train.jsonl", "preference_valid.jsonl"):
        src = repo_root / "data" / name
        if src.exists():
            shutil.copyfile(src, files_root / "data" / name)
    if not (files_root / "data" / "train.jsonl").exists():
        pytest.fail("data/train.jsonl is missing from the repository")
    models_dir = root / "models"
    models_dir.mkdir()
    shutil.copytree(tiny_model_dir, models_dir / "tiny-llama")
    return ServiceEnv(files_root=files_root, models_dir=models_dir, root=root)


@pytest.fixture(scope="session")
def live_service(service_env):
    """A real service (uvicorn subprocess) able to train on the tiny model, with the dev keys."""
    svc = service_env.start("live")
    yield svc
    svc.shutdown()


@pytest.fixture(scope="session")
def light_service_env(tmp_path_factory: pytest.TempPathFactory):
    """Like service_env but without the tiny model build: hand-written data files and an empty models dir.

    For API tests that never train (a job on a model that does not exist simply fails)."""
    from tests.support.server import ServiceEnv, make_light_files_root

    root = tmp_path_factory.mktemp("light-service")
    files_root = make_light_files_root(root / "files")
    models_dir = root / "models"
    models_dir.mkdir()
    return ServiceEnv(files_root=files_root, models_dir=models_dir, root=root)


@pytest.fixture(scope="module")
def api_service(light_service_env):
    """One real service per test module on the light env (fresh data dir, dev keys). It runs no trainers
    (TUNING_MAX_CONCURRENT_JOBS=0): jobs stay `queued` until cancelled: API tests stay fast and exact."""
    svc = light_service_env.start("api", extra_env={"TUNING_MAX_CONCURRENT_JOBS": "0"})
    yield svc
    svc.shutdown()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Lists the screenshots the browser tests saved (tests/browser/conftest.py records them on reports)."""
    paths = [
        value
        for key in ("passed", "failed")
        for report in terminalreporter.stats.get(key, [])
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "screenshot"
    ]
    if paths:
        terminalreporter.write_sep("-", f"{len(paths)} screenshots (tests/browser)")
        for path in paths:
            terminalreporter.write_line(f"  {path}")

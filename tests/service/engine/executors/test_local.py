"""The local executor's command and environment (the runs themselves: tests/service/engine/test_supervisor.py
and the rest of the engine's tests, which all run on it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.service.core_fixtures import make_settings
from tuning_service.engine.executors.local import launch_command


def _row(lease: list[str], **request: object) -> dict[str, object]:
    return {"gpu_lease": lease, "request": request}


def test_launch_command_cpu_and_gpu(tmp_path: Path) -> None:
    s = make_settings(tmp_path, trainer_command="", max_concurrent_jobs=1, cpu_threads=3)
    cpu, env = launch_command(s, _row([]))
    assert cpu == [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "3",
        "-m", "tuning_trainer",
    ]  # fmt: skip
    assert "ACCELERATE_USE_CPU" not in env or env["ACCELERATE_USE_CPU"] == os.environ.get(
        "ACCELERATE_USE_CPU"
    )
    one, _ = launch_command(s, _row(["0"]))
    assert "--cpu" not in one and one[one.index("--num_processes") + 1] == "1" and "--multi_gpu" not in one
    two, env = launch_command(s, _row(["0", "1"]))
    assert two[two.index("--num_processes") + 1] == "2" and "--multi_gpu" in two and "--use_fsdp" not in two
    assert two[-2:] == ["-m", "tuning_trainer"] and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    fsdp, _ = launch_command(s, _row(["0", "1"], distributed="fsdp"))
    assert "--use_fsdp" in fsdp and "--multi_gpu" not in fsdp
    assert fsdp[fsdp.index("--fsdp_auto_wrap_policy") + 1] == "TRANSFORMER_BASED_WRAP"
    # Without GPUs, cpu_processes > 1 runs gloo ranks: --multi_gpu with ACCELERATE_USE_CPU (launch.py says
    # why both), the threads shared between them.
    s.cpu_processes = 2
    gloo, env = launch_command(s, _row([]))
    assert "--cpu" not in gloo and "--multi_gpu" in gloo and env["ACCELERATE_USE_CPU"] == "true"
    assert gloo[gloo.index("--num_processes") + 1] == "2"
    assert gloo[gloo.index("--num_cpu_threads_per_process") + 1] == "1"
    # The test/ops override replaces the whole prefix; it must be a JSON list of strings.
    s.trainer_command = json.dumps(["/bin/fake", "--x"])
    assert launch_command(s, _row(["0", "1"]))[0] == ["/bin/fake", "--x"]
    s.trainer_command = '"/bin/fake --x"'
    with pytest.raises(ValueError, match="JSON list"):
        launch_command(s, _row([]))


def test_trainer_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s = make_settings(tmp_path)
    _, env = launch_command(s, _row(["1", "3"]))
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["HF_HUB_OFFLINE"] == "1"
    assert env["TUNING_MODELS_DIR"] == str(tmp_path / "models")
    assert "CUDA_VISIBLE_DEVICES" not in launch_command(s, _row([]))[1]


def test_after_a_run_of_another_executor_the_files_are_read_from_their_ends(tmp_path: Path) -> None:
    """A Ray run's trainer appended to the job's files too (its records came by its stdout): a local run of
    the same job (the service restarted with TUNING_EXECUTOR=local, then a resume) must not read them again,
    or the Ray run's `interrupted` record would decide the new run's verdict."""
    from tuning_service.engine.executors.local import LocalExecutor

    ex = LocalExecutor(make_settings(tmp_path))
    job_dir = ex.settings.jobs_dir / "j"
    job_dir.mkdir(parents=True)
    (job_dir / "events.jsonl").write_text('{"type": "started"}\n{"type": "interrupted"}\n')
    (job_dir / "output.log").write_text("ray run output\n")
    assert ex.plan({"id": "j", "executor": None}) == {} and ex.plan({"id": "j", "executor": "local"}) == {}
    assert ex.plan({"id": "j", "executor": "ray"}) == {
        "events_offset": len((job_dir / "events.jsonl").read_bytes()),
        "events_lines": 2,
        "log_offset": len("ray run output\n"),
    }

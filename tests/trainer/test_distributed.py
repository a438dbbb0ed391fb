"""Two processes on CPU (gloo), launched as the service launches a multi-process job:
`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`. The loss equals a one-process run
with the same global batch step by step; only rank 0 writes; SIGTERM leaves a checkpoint that a resume
continues on both ranks to the uninterrupted run's result; a launch whose processes formed no group is
refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, accelerate_cmd
from tests.trainer.conftest import events, finish, launch, of_type, trainer_env
from tests.trainer.test_checkpoint_resume import wait_for

pytestmark = pytest.mark.timeout(900)
STEPS = 24


def two_process_cmd(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        "-m",
        "tuning_trainer",
        *args,
    ]


def start_two(*args: str, use_cpu: bool = True) -> subprocess.Popen[str]:
    env = trainer_env()
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return subprocess.Popen(
        two_process_cmd(*args),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def job(tiny_model_dir: Path, train_file: Path, out: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        "--model",
        str(tiny_model_dir),
        "--training-file",
        str(train_file),
        "--output-dir",
        str(out),
        "--method",
        "lora",
        "--max-steps",
        str(STEPS),
        "--learning-rate",
        "1e-3",
        "--batch-size",
        str(batch_size),
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, train_file: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("distributed")
    # Two processes x 2 examples and one process x 4 take the same examples in every step (batching.Plan).
    two = finish(start_two(*job(tiny_model_dir, train_file, base / "two", 2)))
    one = launch(*job(tiny_model_dir, train_file, base / "one", 4))
    # Interrupted with SIGTERM to the whole group, then resumed, still as two processes; dropout draws
    # random numbers on both ranks, so each rank must continue its own stream.
    dropout = ("--lora-dropout", "0.1")
    reference = finish(start_two(*job(tiny_model_dir, train_file, base / "reference", 2, *dropout)))
    proc = start_two(*job(tiny_model_dir, train_file, base / "stopped", 2, *dropout))
    try:
        wait_for(base / "stopped", lambda rs: any(r["type"] == "metrics" and r["step"] >= 4 for r in rs))
        os.killpg(proc.pid, signal.SIGTERM)
    finally:
        stopped = finish(proc, timeout=120)
    interrupted = of_type(events(base / "stopped"), "interrupted")
    assert interrupted, (stopped.stdout[-2000:], stopped.stderr[-3000:])
    resumed = finish(
        start_two(
            *job(tiny_model_dir, train_file, base / "stopped", 2, *dropout),
            "--resume-from",
            interrupted[0]["checkpoint_path"],
        )
    )
    return {"base": base, "two": two, "one": one, "reference": reference, "resumed": resumed}


def test_two_processes_train_as_one_with_the_same_global_batch(runs: dict[str, Any]) -> None:
    assert runs["two"].returncode == 0, runs["two"].stderr[-3000:]
    two, one = events(runs["base"] / "two"), events(runs["base"] / "one")
    (started,) = of_type(two, "started")  # rank 1 wrote nothing: one started record, not two
    assert started["num_processes"] == 2 and of_type(one, "started")[0]["num_processes"] == 1
    assert started["total_steps"] == STEPS
    losses_two = [r["loss"] for r in of_type(two, "metrics")]
    losses_one = [r["loss"] for r in of_type(one, "metrics")]
    assert len(losses_two) == len(losses_one) == STEPS
    assert losses_two == pytest.approx(losses_one, rel=1e-4)
    # Token accuracy is summed over both ranks too.
    acc_two = [r["token_accuracy"] for r in of_type(two, "metrics")]
    assert acc_two == pytest.approx([r["token_accuracy"] for r in of_type(one, "metrics")], abs=1e-6)
    # The tokens are counted across processes.
    assert of_type(two, "completed")[0]["tokens_seen"] == of_type(one, "completed")[0]["tokens_seen"]


def test_sigterm_checkpoints_both_ranks_and_the_resume_matches_the_uninterrupted_run(
    runs: dict[str, Any],
) -> None:
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-3000:]
    records = events(runs["base"] / "stopped")
    (interrupted,) = of_type(records, "interrupted")
    ckpt = Path(interrupted["checkpoint_path"])
    assert {"rng_state_0.pt", "rng_state_1.pt", "trainer_state.pt"} <= {p.name for p in ckpt.iterdir()}
    n = interrupted["step"]
    after = {r["step"]: r["loss"] for r in records if r["type"] == "metrics" and r["step"] > n}
    reference = {r["step"]: r["loss"] for r in of_type(events(runs["base"] / "reference"), "metrics")}
    assert sorted(after) == list(range(n + 1, STEPS + 1))
    assert [after[s] for s in sorted(after)] == pytest.approx([reference[s] for s in sorted(after)], rel=1e-5)


def test_processes_without_a_process_group_are_refused(
    tmp_path: Path, tiny_model_dir: Path, train_file: Path
) -> None:
    # Without ACCELERATE_USE_CPU, --multi_gpu on a machine without GPUs starts two unrelated processes.
    out = tmp_path / "out"
    done = finish(start_two(*job(tiny_model_dir, train_file, out, 2), use_cpu=False))
    assert done.returncode != 0
    (failed,) = of_type(events(out), "failed")  # rank 0 only: one record
    assert failed["code"] == "invalid_config" and failed["param"] == "num_processes"
    assert "ACCELERATE_USE_CPU=true" in failed["message"] and "formed no process group" in failed["message"]
    assert not of_type(events(out), "started")


def test_accelerate_cmd_stays_single_process() -> None:
    assert "--cpu" in accelerate_cmd() and "--multi_gpu" not in accelerate_cmd()


def _gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() < 2, reason="FSDP needs 2 GPUs (accelerate runs an FSDP launch on CPU as DDP)")
@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_fsdp_on_two_gpus_trains_checkpoints_and_resumes(
    tmp_path: Path, tiny_model_dir: Path, train_file: Path, method: str
) -> None:
    """The service's FSDP launch (launch.FSDP): the weights sharded (QLoRA's 4-bit storage in the compute
    dtype), the adapter gathered whole on rank 0, each rank's optimizer shard in the checkpoint, and a resume
    that continues to the same adapter file set."""
    from tuning_trainer.launch import launch_flags

    flags, extra_env = launch_flags(gpus=2, distributed="fsdp")
    env = {**trainer_env(), **extra_env}
    args = [*job(tiny_model_dir, train_file, tmp_path / "out", 2), "--method", method, "--save-steps", "6"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *flags, "-m", "tuning_trainer", *args]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = events(tmp_path / "out")
    (started,) = of_type(records, "started")
    assert started["num_processes"] == 2 and started["device"].startswith("cuda")
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    ckpt = of_type(records, "checkpoint")[0]["path"]
    assert {p.name for p in Path(ckpt).glob("optimizer_*.pt")} == {"optimizer_0.pt", "optimizer_1.pt"}
    resumed = subprocess.run(
        [*cmd[:-len(args)], *args, "--output-dir", str(tmp_path / "resumed"), "--resume-from", ckpt],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]

"""End to end through the real HTTP API with the real trainer (`accelerate launch -m tuning_trainer`) on the
tiny local model: a job trains to `succeeded`; a running job is cancelled with a checkpoint and no process
left; a hub model that cannot be reached offline fails clearly; a job survives a restart of the service.

These share one service (`live_service`) and the session's tiny model; each job is a few seconds of CPU.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.support.server import ServiceEnv, ServiceProcess

pytestmark = pytest.mark.slow

SMALL = {"epochs": 1, "batch_size": 4, "max_seq_length": 64, "max_steps": 12, "logging_steps": 1}


def _trainer_processes(job_dir: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line names this job's folder."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(str(job_dir) in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _reap(job_dir: Path) -> None:
    """Test hygiene: trainers outlive the service by design, so a failed test must not leave one running."""
    for p in _trainer_processes(job_dir):
        try:
            os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_for_step(svc: ServiceProcess, job_id: str, step: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = svc.get(f"/v1/tunings.get/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            raise AssertionError(f"job ended before step {step}: {job}\n{svc.output()[-3000:]}")
        if job["metrics"] and (job["metrics"].get("current_step") or 0) >= step:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached step {step}")


def test_a_job_trains_to_succeeded_with_metrics_and_an_adapter(live_service: ServiceProcess) -> None:
    job = live_service.create_job(
        model="tiny-llama",
        training_file="data/train.jsonl",
        validation_file="data/valid.jsonl",
        method="lora",
        suffix="e2e",
        hyperparameters=SMALL,
    )
    running = live_service.wait_for(job["id"], {"running", "succeeded"}, timeout=120)
    assert running["started_at"] is not None
    # Follow the job live while it trains: the stream ends by itself after the terminal status record.
    stream = live_service.stream(f"/v1/tunings.logs/{job['id']}?follow=true", timeout=180)
    try:
        events = stream.events()
    finally:
        stream.close()
    types = [e["event"] for e in events]
    assert {"started", "metrics", "completed"} <= set(types), types
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded"
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))

    done = live_service.get(f"/v1/tunings.get/{job['id']}").json()
    assert done["status"] == "succeeded", done
    assert done["fine_tuned_model"] == f"ft:tiny-llama:e2e:{job['id']}"
    assert done["error"] is None
    assert done["finished_at"] >= done["started_at"] and done["duration"] >= 0
    assert done["trained_tokens"] and done["trained_tokens"] > 0
    m = done["metrics"]
    assert m["progress"] == pytest.approx(1.0)
    assert m["current_step"] == m["total_steps"] == 12
    assert isinstance(m["train_loss"], float)
    assert m["total_epochs"] == 1
    # Resolved hyperparameters replace the requested ones once the trainer has started.
    assert done["hyperparameters"]["batch_size"] == 4
    adapter = Path(done["adapter_path"])
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not _trainer_processes(live_service.data_dir / "jobs" / job["id"])


def test_cancelling_a_running_job_checkpoints_and_leaves_no_process(live_service: ServiceProcess) -> None:
    job = live_service.create_job(
        model="tiny-llama", method="lora", hyperparameters={**SMALL, "max_steps": 100000, "epochs": 1000}
    )
    job_dir = live_service.data_dir / "jobs" / job["id"]
    try:
        _cancel_and_check(live_service, job["id"], job_dir)
    finally:
        _reap(job_dir)


def _cancel_and_check(live_service: ServiceProcess, job_id: str, job_dir: Path) -> None:
    job = {"id": job_id}
    _wait_for_step(live_service, job_id, 2)
    assert _trainer_processes(job_dir), "the trainer should be running"

    r = live_service.post(f"/v1/tunings.cancel/{job['id']}")
    assert r.status == 200
    assert r.json()["status"] in ("cancelling", "cancelled")
    done = live_service.wait_for(job["id"], "cancelled", timeout=60)
    assert done["finished_at"] is not None
    assert not _trainer_processes(job_dir)
    checkpoints = sorted((job_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, list(job_dir.iterdir())
    records = live_service.get(f"/v1/tunings.logs/{job['id']}?limit=1000").json()["data"]
    interrupted = [r for r in records if r["type"] == "interrupted"]
    assert interrupted and Path(interrupted[0]["checkpoint_path"]).name == checkpoints[-1].name
    assert [r["status"] for r in records if r["type"] == "status"][-2:] == ["cancelling", "cancelled"]


def test_an_unreachable_hub_model_fails_with_a_clear_message(live_service: ServiceProcess) -> None:
    job = live_service.create_job(
        model="meta-llama/Llama-2-7b-hf",
        training_file="data/train.jsonl",
        hyperparameters={"epochs": 3, "learning_rate": 0.0002, "batch_size": 4},
    )
    failed = live_service.wait_for(job["id"], "failed", timeout=120)
    err = failed["error"]
    assert err["code"] in ("model_unavailable", "model_not_found"), err
    assert "meta-llama/Llama-2-7b-hf" in err["message"]
    assert err["exit_code"] not in (
        None,
        0,
    )  # the launcher's status (accelerate turns the trainer's 2 into 1)
    assert err["log_tail"]
    assert failed["fine_tuned_model"] is None


def test_a_job_finishes_across_a_service_restart(service_env: ServiceEnv) -> None:
    svc = service_env.start("restart")
    job = svc.create_job(model="tiny-llama", method="lora", hyperparameters={**SMALL, "max_steps": 60})
    job_dir = svc.data_dir / "jobs" / job["id"]
    try:
        _wait_for_step(svc, job["id"], 1)
        svc.stop()  # SIGTERM to the service only: the trainer runs in its own session and keeps going
        alive_while_down = bool(_trainer_processes(job_dir))
        svc.start()
        done = svc.wait_for(job["id"], "succeeded", timeout=300)
        assert done["metrics"]["current_step"] == 60
        assert Path(done["adapter_path"], "adapter_model.safetensors").is_file()
        assert not _trainer_processes(job_dir)
        log = (svc.data_dir / "tuning_service.log").read_text()
        if alive_while_down:
            assert "re-attached" in log
        print(f"trainer alive while the service was down: {alive_while_down}")
    finally:
        svc.shutdown()

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

from tests.support.server import DEV_KEY, ServiceEnv, ServiceProcess

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


def test_a_job_runs_as_two_processes_on_cpu_when_the_service_says_so(service_env: ServiceEnv) -> None:
    """TUNING_CPU_PROCESSES=2: the supervisor launches the multi-process command (gloo ranks) and the tiny
    model trains that way; a job still asks for one GPU's worth (there are none): num_gpus 2 is refused."""
    svc = service_env.start("two-processes", extra_env={"TUNING_CPU_PROCESSES": "2"})
    try:
        refused = svc.post("/v1/tunings.create", {"model": "tiny-llama", "training_file": "data/train.jsonl",
                                                 "num_gpus": 2})  # fmt: skip
        assert refused.status == 422 and refused.error["param"] == "num_gpus", refused.text
        assert "no GPUs" in refused.error["message"]
        job = svc.create_job(model="tiny-llama", method="lora", hyperparameters={**SMALL, "batch_size": 2})
        assert (job["num_gpus"], job["distributed"]) == (1, "ddp")
        done = svc.wait_for(job["id"], {"succeeded", "failed"}, timeout=300)
        assert done["status"] == "succeeded", (done, svc.output()[-3000:])
        records = svc.get(f"/v1/tunings.events/{job['id']}?limit=1000").json()["data"]
        (started,) = [r for r in records if r["type"] == "started"]
        assert started["num_processes"] == 2 and started["device"].startswith("cpu")
        # Two ranks x 2 examples: 12 steps of 4 examples, every step's metrics written once (rank 0 only).
        assert [r["step"] for r in records if r["type"] == "metrics"] == list(range(1, 13))
    finally:
        _reap(svc.data_dir / "jobs")
        svc.shutdown()


def test_a_dry_run_reports_what_the_job_then_does(live_service: ServiceProcess) -> None:
    """`dry_run: true` (SDK `create(..., dry_run=True)`) makes no job and answers with the trainer's own plan:
    every value it shares with the `started` record is the one the real job then reports. Once this service
    has trained that model shape on this device, the estimate has seconds too."""
    from tuning_sdk import TuningClient, TuningEstimate
    from tuning_trainer.records import RunPlanFacts

    hp = {"epochs": "auto", "batch_size": "auto", "max_seq_length": 24, "max_steps": 4, "packing": True}
    request = dict(
        model="tiny-llama",
        training_file="data/train.jsonl",
        validation_file="data/valid.jsonl",
        method="lora",
        hyperparameters=hp,
    )
    client = TuningClient(api_key=DEV_KEY, base_url=live_service.base_url, timeout=120)
    try:
        before = len(live_service.get("/v1/tunings.list?limit=100").json()["data"])
        estimate = client.tunings.create(**request, dry_run=True)  # type: ignore[arg-type]
        assert isinstance(estimate, TuningEstimate) and estimate.object == "tuning.estimate"
        assert len(live_service.get("/v1/tunings.list?limit=100").json()["data"]) == before  # no job
        wire = dict(estimate.raw)
        assert wire["truncated_examples"] > 0 and set(wire["resolved_auto"]) >= {"epochs", "batch_size"}
        assert estimate.memory.fits and estimate.memory.peak_mb > 0 and estimate.device == "cpu"
        assert (estimate.estimated_seconds is None) == (estimate.based_on_jobs == 0)

        job = client.tunings.create(**request)  # type: ignore[arg-type]
        done = live_service.wait_for(job.id, {"succeeded", "failed"}, timeout=300)
        assert done["status"] == "succeeded", (done, live_service.output()[-3000:])
        records = live_service.get(f"/v1/tunings.events/{job.id}?limit=1000").json()["data"]
        (started,) = [r for r in records if r["type"] == "started"]
        shared = set(RunPlanFacts.model_fields)
        assert {k: wire[k] for k in shared} == {k: started[k] for k in shared}
        assert wire["hyperparameters"] == started["config"]["hyperparameters"]
        assert wire["memory"]["peak_mb"] == started["model_setup"]["estimated_peak_memory_mb"]
        assert wire["shape"] == started["model_setup"]["shape"]

        again = client.tunings.create(**request, dry_run=True)  # type: ignore[arg-type]
        assert (
            again.based_on_jobs >= 1 and again.estimated_seconds is not None and again.estimated_seconds > 0
        )
    finally:
        client.close()


def test_a_dry_run_refuses_what_create_would_or_the_run_could_not_do(live_service: ServiceProcess) -> None:
    base = {"model": "tiny-llama", "training_file": "data/train.jsonl", "dry_run": True}
    cases = [
        # The model is only looked for by the trainer's planning: a dry run finds out at once (neither in the
        # models folder nor in the hub cache, and the hub offline).
        ({"model": "someone/no-such-model"}, 404, "model_unavailable", "model"),
        ({"training_file": "data/missing.jsonl"}, 404, "file_not_found", "training_file"),
        # Known only once the data is tokenised.
        ({"hyperparameters": {"max_seq_length": 8}}, 422, "no_trainable_tokens", "training_file"),
        # Known only on the device: there is no FlashAttention on a CPU.
        (
            {"hyperparameters": {"attn_implementation": "flash_attention_2"}},
            422,
            "invalid_hyperparameter",
            "hyperparameters.attn_implementation",
        ),
        ({"num_gpus": 2}, 422, "not_enough_gpus", "num_gpus"),
    ]
    for change, status, code, param in cases:
        r = live_service.post("/v1/tunings.create", {**base, **change})
        assert (r.status, r.error["code"], r.error["param"]) == (status, code, param), (change, r.text)
    # The same through the OpenAI route (its extension field), answered with the native estimate.
    r = live_service.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "tiny-llama",
            "training_file": "data/train.jsonl",
            "dry_run": True,
            "tuning_method": "lora",
        },
    )
    assert r.status == 200 and r.json()["object"] == "tuning.estimate" and r.json()["adapter"] == "lora", (
        r.text
    )

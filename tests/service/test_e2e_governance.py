"""Governance and trackers end to end: the real HTTP API, the real trainer (`accelerate launch -m
tuning_trainer`) on the tiny local model. The jobs start together on one service (three slots), so that the
module costs about its longest job:

- a job whose trainer is killed with SIGKILL after its first checkpoint is retried (auto_retry), resumes from
  that checkpoint and succeeds, two attempts recorded;
- a job that reaches max_runtime_seconds mid-training checkpoints and fails with `deadline_exceeded`; a
  resume continues from that checkpoint;
- a job with every tracker (TensorBoard; W&B offline with the key's W&B key; MLflow at an address where
  nothing listens) succeeds with one warning record, its TensorBoard files downloadable, the W&B key
  nowhere in what the API or the logs show.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.server import DEV_KEY, ServiceEnv, ServiceProcess

pytestmark = pytest.mark.slow

SMALL = {"epochs": 1000, "batch_size": 4, "max_seq_length": 64, "logging_steps": 1}
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # W&B keys are 40 hex characters


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


@pytest.fixture(scope="module")
def gov(service_env: ServiceEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    svc = service_env.start(
        "governance",
        extra_env={
            "TUNING_MAX_CONCURRENT_JOBS": "3",
            "WANDB_MODE": "offline",
            "TUNING_CANCEL_GRACE_SECONDS": "20",
        },
    )
    key = json.loads(svc.cli("keys", "create", "--name", "trackers", "--json").stdout)
    svc.cli("keys", "set-integration", "trackers", "--wandb-api-key", WANDB_KEY)
    jobs = {
        # First, and with room for a trainer that starts slowly on a loaded machine: the deadline counts from
        # the claim, and a SIGTERM before the trainer has set up its handler stops it without a checkpoint.
        "deadline": svc.create_job(
            model="tiny-llama",
            method="lora",
            max_runtime_seconds=30,
            hyperparameters={**SMALL, "max_steps": 100000, "logging_steps": 20},
        ),
        "retry": svc.create_job(
            model="tiny-llama",
            method="lora",
            auto_retry=1,
            hyperparameters={**SMALL, "max_steps": 40, "save_steps": 5},
        ),
        "trackers": svc.create_job(
            key=key["key"],
            model="tiny-llama",
            method="lora",
            validation_file="data/valid.jsonl",
            hyperparameters={**SMALL, "max_steps": 8, "eval_steps": 4},
            integrations=[
                {"type": "tensorboard"},
                {"type": "wandb", "wandb": {"project": "tuning-e2e", "tags": ["e2e"]}},
                {"type": "mlflow", "mlflow": {"tracking_uri": f"http://127.0.0.1:{_closed_port()}"}},
            ],
        ),
    }
    try:
        yield {"svc": svc, "jobs": jobs, "key": key}
    finally:
        for job in jobs.values():
            _reap(svc.data_dir / "jobs" / job["id"])
        svc.shutdown()


def _trainers(job_dir: Path) -> list[psutil.Process]:
    """The training processes of a job (not the `accelerate launch` parent): their command line runs
    tuning_trainer on this job's config."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["status"] == psutil.STATUS_ZOMBIE or not any(str(job_dir) in c for c in cmd):
                continue
            if "tuning_trainer" in cmd and not any("accelerate" in c for c in cmd):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _reap(job_dir: Path) -> None:
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(job_dir) in c for c in p.info["cmdline"] or []):
                os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue


def _records(svc: ServiceProcess, job_id: str, key: str = DEV_KEY) -> list[dict[str, Any]]:
    """Every record but the output lines, page by page."""
    out: list[dict[str, Any]] = []
    while True:
        page = svc.get(f"/v1/tunings.events/{job_id}?limit=1000&after={len(out) and out[-1]['seq']}", key=key)
        out += page.json()["data"]
        if not page.json()["has_more"]:
            return out


def _of(records: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == type_]


def _wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_trainer_killed_with_sigkill_is_retried_from_its_checkpoint(gov: dict[str, Any]) -> None:
    svc, job = gov["svc"], gov["jobs"]["retry"]
    job_dir = svc.data_dir / "jobs" / job["id"]
    # A whole checkpoint (the API lists those; a folder being written is checkpoint-N.tmp).
    _wait(lambda: svc.get(f"/v1/tunings.checkpoints/{job['id']}").json()["data"], 180, "the first checkpoint")
    (victim,) = _wait(lambda: _trainers(job_dir), 30, "the training process")
    victim.kill()  # kill -9: no checkpoint, no record, as the kernel's OOM killer does
    done = svc.wait_for(job["id"], "succeeded", timeout=240)
    assert done["retries"] == 1 and done["metrics"]["current_step"] == 40
    records = _records(svc, job["id"])
    (retry,) = _of(records, "retry")
    assert retry["attempt"] == 1 and retry["reason"] == "trainer_crashed", retry
    assert retry["step"] >= 5 and retry["checkpoint"] == f"checkpoints/checkpoint-{retry['step']}"
    assert [r["start_step"] for r in _of(records, "started")] == [0, retry["step"]]
    assert Path(done["adapter_path"], "adapter_model.safetensors").is_file()


def test_the_deadline_stops_with_a_checkpoint_and_the_job_resumes_from_it(gov: dict[str, Any]) -> None:
    svc, job = gov["svc"], gov["jobs"]["deadline"]
    failed = svc.wait_for(job["id"], "failed", timeout=180)
    error = failed["error"]
    assert error["code"] == "deadline_exceeded", error
    checkpoint = Path(error["checkpoint_path"])
    step = int(checkpoint.name.split("-")[-1])
    assert step > 0 and checkpoint.is_dir(), error
    assert svc.post(f"/v1/tunings.resume/{job['id']}").json()["status"] == "queued"
    _wait(lambda: len(_of(_records(svc, job["id"]), "started")) == 2, 120, "the resumed run's start")
    started = _of(_records(svc, job["id"]), "started")
    assert [r["start_step"] for r in started] == [0, step]
    assert svc.post(f"/v1/tunings.cancel/{job['id']}").status == 200
    svc.wait_for(job["id"], "cancelled", timeout=120)


def test_trackers_log_and_a_failing_one_costs_a_warning_only(gov: dict[str, Any]) -> None:
    svc, job, key = gov["svc"], gov["jobs"]["trackers"], gov["key"]["key"]
    done = svc.wait_for(job["id"], "succeeded", key=key, timeout=240)
    assert [i["type"] for i in done["integrations"]] == ["tensorboard", "wandb", "mlflow"]
    records = _records(svc, job["id"], key)
    warnings = _of(records, "warning")
    assert [(w["code"], w["tracker"]) for w in warnings] == [("tracker_failed", "mlflow")], warnings
    job_dir = svc.data_dir / "jobs" / job["id"]
    assert list((job_dir / "wandb").glob("offline-run-*")), "W&B's offline run directory"

    r = svc.get(f"/v1/tunings.download/{job['id']}?artifact=tensorboard", key=key)
    assert r.status == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:gz") as tar:
        assert any(n.startswith("events.out.tfevents") for n in tar.getnames()), tar.getnames()
    assert (
        svc.get(f"/v1/tunings.download/{job['id']}?artifact=tensorboard&checkpoint=4", key=key).error["code"]
        == "checkpoint_not_applicable"
    )
    other = gov["jobs"]["retry"]["id"]
    assert svc.get(f"/v1/tunings.download/{other}?artifact=tensorboard").error["code"] == "artifact_not_found"

    # The W&B key went to this key's trainer only, and is in nothing anyone can read back.
    shown = json.dumps([svc.get(f"/v1/tunings.get/{job['id']}", key=key).json(), records])
    shown += svc.output() + (svc.data_dir / "tuning_service.log").read_text()
    shown += (job_dir / "output.log").read_text() + (job_dir / "events.jsonl").read_text()
    assert WANDB_KEY not in shown
    assert not (job_dir / ".secrets.json").exists()

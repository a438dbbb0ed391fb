"""The Ray executor against a real local Ray head (tests/support/ray_head.py) and real services (uvicorn
subprocesses, TUNING_EXECUTOR=ray): a real tiny-model job, and the fake trainer where only the run's life is
tested. The head is one per module; the last test kills it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.job_submission", reason="the `ray` extra is not installed")

from tests.reliability.conftest import FAKE_COMMAND, TERMINAL, fake_job
from tests.support.ray_head import REPO, RayHead
from tests.support.server import ServiceEnv, ServiceProcess

# A real run short enough for CI, with checkpoints.
SMALL = {
    "epochs": 1,
    "batch_size": 4,
    "max_seq_length": 64,
    "max_steps": 6,
    "logging_steps": 1,
    "save_steps": 3,
}
# Record fields that differ between two runs of the same job by nature (clocks, machine load).
VOLATILE = {"time", "seq", "tokens_per_second", "eta_seconds", "duration_seconds", "samples_per_second",
            "elapsed_seconds", "peak_memory_mb", "memory"}  # fmt: skip


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    head = RayHead(num_cpus=2).start()
    yield head
    head.stop()


def ray_env(head: RayHead, **extra: str) -> dict[str, str]:
    return {"TUNING_EXECUTOR": "ray", "TUNING_RAY_ADDRESS": head.address, **extra}


@pytest.fixture(scope="module")
def ray_fake_service(light_service_env: ServiceEnv, ray_head: RayHead) -> Iterator[ServiceProcess]:
    """The fake trainer on Ray, two jobs at a time, a 2 s grace period."""
    svc = light_service_env.start(
        "ray-fake",
        extra_env=ray_env(
            ray_head,
            TUNING_TRAINER_COMMAND=FAKE_COMMAND,
            TUNING_MAX_CONCURRENT_JOBS="2",
            TUNING_CANCEL_GRACE_SECONDS="2",
        ),
    )
    yield svc
    svc.shutdown()


def records(svc: ServiceProcess, job_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = svc.get(f"/v1/tunings.logs/{job_id}?limit=1000&after={out[-1]['seq'] if out else 0}").json()
        out += page["data"]
        if not page["has_more"]:
            return out


def wait_record(svc: ServiceProcess, job_id: str, type_: str, timeout: float = 60, **match: Any) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in records(svc, job_id):
            if r["type"] == type_ and all(r.get(k) == v for k, v in match.items()):
                return r
        time.sleep(0.1)
    raise AssertionError(f"no {type_} record {match} in {job_id}:\n{svc.output()[-3000:]}")


def ray_client(head: RayHead) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address)


def trainer_records(svc: ServiceProcess, job_id: str) -> list[dict[str, Any]]:
    """The trainer's records (not the service's status and log lines), without what differs by nature."""
    out = []
    for r in records(svc, job_id):
        if r["type"] in ("status", "log"):
            continue
        out.append({k: v for k, v in r.items() if k not in VOLATILE})
    return out


def test_a_real_job_on_ray_succeeds_with_the_records_of_the_local_executor(
    service_env: ServiceEnv, ray_head: RayHead
) -> None:
    on_ray = service_env.start("ray-real", extra_env=ray_env(ray_head))
    local = service_env.start("local-real")
    try:
        body = {"model": "tiny-llama", "method": "lora", "hyperparameters": SMALL, "seed": 7}
        ray_job = on_ray.create_job(**body)["id"]
        local_job = local.create_job(**body)["id"]
        ray_done = on_ray.wait_for(ray_job, TERMINAL, timeout=240)
        local_done = local.wait_for(local_job, TERMINAL, timeout=240)
        assert ray_done["status"] == "succeeded", ray_done["error"]
        assert local_done["status"] == "succeeded", local_done["error"]
        # Ray ran it: its submission id is the job id, and it succeeded there too.
        assert str(ray_client(ray_head).get_job_status(ray_job)) == "SUCCEEDED"
        got, want = trainer_records(on_ray, ray_job), trainer_records(local, local_job)
        assert [r["type"] for r in got] == [r["type"] for r in want]
        for a, b in zip(got, want, strict=True):
            # Field for field: the same names, and the same values where a run is deterministic (paths name
            # each service's own job folder).
            assert a.keys() == b.keys(), (a, b)
            for k in a:
                if k in ("path", "adapter_path", "checkpoint_path", "config", "device"):
                    continue
                assert a[k] == pytest.approx(b[k], rel=1e-4) if isinstance(a[k], float) else a[k] == b[k], k
        # Paths in the records are the service's own, and the artifacts are there (shared storage).
        completed = got[-1]
        assert completed["type"] == "completed"
        adapter = on_ray.data_dir / "jobs" / ray_job / "adapter"
        assert ray_done["adapter_path"] == str(adapter) and (adapter / "adapter_config.json").is_file()
        steps = [r["step"] for r in got if r["type"] == "metrics"]
        assert steps == list(range(1, SMALL["max_steps"] + 1))
        assert on_ray.get(f"/v1/tunings.download/{ray_job}").status == 200
        ckpts = on_ray.get(f"/v1/tunings.checkpoints/{ray_job}").json()["data"]
        assert [c["step"] for c in ckpts] == [3], ckpts  # (the last step is the final adapter)
    finally:
        on_ray.shutdown()
        local.shutdown()


def test_cancel_a_running_job(ray_fake_service: ServiceProcess, ray_head: RayHead) -> None:
    svc = ray_fake_service
    job_id = fake_job(svc, "complete?steps=400&delay=0.05&save=5")["id"]
    wait_record(svc, job_id, "checkpoint")
    r = svc.post(f"/v1/tunings.cancel/{job_id}")
    assert r.status == 200 and r.json()["status"] == "cancelling", r.text
    job = svc.wait_for(job_id, TERMINAL, timeout=30)
    # Ray's stop_job reached the trainer as SIGTERM: it saved a checkpoint and said so.
    assert job["status"] == "cancelled", job
    assert any(r["type"] == "interrupted" for r in records(svc, job_id))
    assert str(ray_client(ray_head).get_job_status(job_id)) == "STOPPED"


def test_cancel_a_job_ray_holds_pending(light_service_env: ServiceEnv, ray_head: RayHead) -> None:
    # Each job asks for more CPUs than the head has: Ray keeps it PENDING, and stop_job would not end it.
    svc = light_service_env.start(
        "ray-pending",
        extra_env=ray_env(ray_head, TUNING_TRAINER_COMMAND=FAKE_COMMAND, TUNING_RAY_NUM_CPUS="3"),
    )
    try:
        job_id = fake_job(svc, "complete")["id"]
        svc.wait_for(job_id, "running")  # (claimed: the submission to Ray follows)
        client, deadline = ray_client(ray_head), time.monotonic() + 20
        while not any(j.submission_id == job_id for j in client.list_jobs()):
            assert time.monotonic() < deadline, "never submitted"
            time.sleep(0.1)
        time.sleep(1.0)
        assert str(client.get_job_status(job_id)) == "PENDING"
        t0 = time.monotonic()
        assert svc.post(f"/v1/tunings.cancel/{job_id}").status == 200
        job = svc.wait_for(job_id, TERMINAL, timeout=10)
        assert job["status"] == "cancelled" and time.monotonic() - t0 < 3, job
        assert "before it started" in records(svc, job_id)[-1]["message"]
        assert not (svc.data_dir / "jobs" / job_id / "launches.txt").exists()  # the trainer never ran
        # Should Ray start it after all, its entrypoint exits before the trainer (the marker), and Ray's
        # queued stop ends it. (This head can never schedule it: the Ray job itself stays PENDING.)
        assert (svc.data_dir / "jobs" / job_id / f".stopped-{job_id}").exists()
        assert str(client.get_job_status(job_id)) == "PENDING"
    finally:
        svc.shutdown()


def test_pause_then_resume_from_the_checkpoint(ray_fake_service: ServiceProcess, ray_head: RayHead) -> None:
    svc = ray_fake_service
    job_id = fake_job(svc, "complete?steps=60&delay=0.05&save=5")["id"]
    wait_record(svc, job_id, "checkpoint", step=10)
    assert svc.post(f"/v1/tunings.pause/{job_id}").status == 200
    paused = svc.wait_for(job_id, {"paused"}, timeout=30)
    interrupted = [r for r in records(svc, job_id) if r["type"] == "interrupted"][-1]
    step = interrupted["step"]
    assert step >= 10 and paused["status"] == "paused"
    assert svc.post(f"/v1/tunings.resume/{job_id}").status == 200
    done = svc.wait_for(job_id, TERMINAL, timeout=60)
    assert done["status"] == "succeeded", done["error"]
    started = [r for r in records(svc, job_id) if r["type"] == "started"]
    assert [s["start_step"] for s in started] == [0, step]
    # The second run is a second Ray job (Ray refuses a submission id twice).
    client = ray_client(ray_head)
    assert str(client.get_job_status(job_id)) == "STOPPED"
    assert str(client.get_job_status(f"{job_id}-run2")) == "SUCCEEDED"


def test_kill_9_of_the_service_mid_job_loses_and_repeats_nothing(
    light_service_env: ServiceEnv, ray_head: RayHead
) -> None:
    svc = light_service_env.start(
        "ray-kill9", extra_env=ray_env(ray_head, TUNING_TRAINER_COMMAND=FAKE_COMMAND)
    )
    try:
        job_id = fake_job(svc, "complete?steps=60&delay=0.05")["id"]
        wait_record(svc, job_id, "metrics", step=5)
        svc.kill()  # SIGKILL: the Ray job goes on without us
        time.sleep(1.0)
        svc.start()  # re-attaches by id before it accepts work; the stream is replayed from its start
        done = svc.wait_for(job_id, TERMINAL, timeout=60)
        assert done["status"] == "succeeded", done["error"]
        recs = records(svc, job_id)
        assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
        assert [r["step"] for r in recs if r["type"] == "metrics"] == list(range(1, 61))
        assert [r["type"] for r in recs].count("completed") == 1
        assert [r["type"] for r in recs].count("started") == 1
        lines = [r["line"] for r in recs if r["type"] == "log" and r["line"].strip()]
        assert lines and len(lines) == len(set(lines))  # the replayed stream stored no output line twice
    finally:
        svc.shutdown()


def test_a_job_ray_forgot_resumes_from_its_checkpoint_when_it_asked(
    light_service_env: ServiceEnv, ray_head: RayHead
) -> None:
    """resume_on_restart on Ray: the service was killed, and meanwhile Ray lost the job (here: stopped and
    deleted, as a head restarted without fault tolerance forgets it). The restarted service queues the job
    again from its newest checkpoint, as a second Ray job, instead of failing it."""
    env = ray_env(ray_head, TUNING_TRAINER_COMMAND=FAKE_COMMAND)
    svc = light_service_env.start("ray-forgotten", extra_env=env)
    try:
        job_id = fake_job(svc, "complete?steps=400&delay=0.05&save=5", resume_on_restart=True)["id"]
        wait_record(svc, job_id, "checkpoint", step=10)
        svc.kill()
        client = ray_client(ray_head)
        client.stop_job(job_id)
        deadline = time.monotonic() + 30
        while str(client.get_job_status(job_id)) != "STOPPED":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.delete_job(job_id)
        svc.start()
        resumed = wait_record(svc, job_id, "resumed_after_restart")
        started = wait_record(svc, job_id, "started", start_step=resumed["step"])
        assert started["start_step"] >= 10
        assert str(client.get_job_status(f"{job_id}-run2")) in ("PENDING", "RUNNING", "SUCCEEDED")
        assert svc.post(f"/v1/tunings.cancel/{job_id}").status == 200
        assert svc.wait_for(job_id, TERMINAL, timeout=30)["status"] == "cancelled"
    finally:
        svc.shutdown()


def test_the_benchmark_runs_and_reports_its_figures(ray_head: RayHead, tmp_path: Path) -> None:
    """scripts/bench/ray_executor.py --quick on this module's head (a smoke test: it measures nothing)."""
    out = tmp_path / "ray.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench" / "ray_executor.py"), "--quick", "--address",
         ray_head.address, "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["id"] for r in data["results"]] == ["R1", "R1", "R1", "R1", "R2"]
    assert all(isinstance(r["value"], float) for r in data["results"])


def test_a_killed_head_ends_the_job_executor_lost(light_service_env: ServiceEnv, ray_head: RayHead) -> None:
    """Last in the module: it kills the module's head."""
    lost_after = 3.0
    svc = light_service_env.start(
        "ray-lost",
        extra_env=ray_env(
            ray_head, TUNING_TRAINER_COMMAND=FAKE_COMMAND, TUNING_EXECUTOR_LOST_SECONDS=str(lost_after)
        ),
    )
    try:
        job_id = fake_job(svc, "complete?steps=2000&delay=0.05")["id"]
        wait_record(svc, job_id, "metrics", step=2)
        ray_head.kill()
        t0 = time.monotonic()
        job = svc.wait_for(job_id, TERMINAL, timeout=30)
        took = time.monotonic() - t0
        assert job["status"] == "failed" and job["error"]["code"] == "executor_lost", job
        assert "has not answered" in job["error"]["message"]
        # Stated: executor_lost_seconds, plus a status poll and the final read's own failed call.
        assert took < lost_after + 5, took
        # A new job cannot be admitted while the cluster does not answer: 503, nothing made.
        r = svc.post("/v1/tunings.create", {"model": "fake:complete", "training_file": "data/train.jsonl"})
        assert r.status == 503 and r.error["code"] == "executor_unavailable", r.text
        assert svc.get("/v1/tunings.list").json()["data"][0]["id"] == job_id
        print(f"executor_lost {took:.1f} s after the head was killed (executor_lost_seconds {lost_after})")
    finally:
        svc.shutdown()

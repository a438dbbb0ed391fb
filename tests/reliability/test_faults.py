"""Faults with real processes and real signals (issue 5, points 1 and 3).

1. kill -9 of the service while the REAL trainer trains the tiny model; restart: the job ends `succeeded`
   with every metrics record, and no GET after recovery shows a stale state. Variant: the trainer is killed
   too -> `failed` / `service_restart`, and no process of its group is left; or, for a job created with
   `resume_on_restart`, queued again and resumed from its newest checkpoint to `succeeded`.
3. cancel of a trainer whose children ignore SIGTERM: the whole group is gone within grace + 1 s (psutil),
   `cancelled`, checkpoint kept (fake trainer: the real one spawns no grandchildren of its own; the plain
   real-trainer cancel is tests/service/test_e2e_training.py::test_cancelling_a_running_job_...).
Point 2 (PID reuse) is tests/service/engine/test_recovery.py::test_reused_pid_is_never_touched; point 4
(killed by a signal, out of memory, exit without a terminal record) is
tests/service/engine/test_supervisor.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time

import pytest

from tests.reliability.conftest import TERMINAL, fake_env, fake_job
from tests.service.core_fixtures import group_pids
from tests.support.server import ServiceEnv, ServiceProcess

SMALL = {"epochs": 1, "batch_size": 4, "max_seq_length": 64, "max_steps": 30, "logging_steps": 1}


def _pgid(svc: ServiceProcess, job_id: str) -> int:
    # Read-only look at the service's own row: the API does not publish process ids.
    with contextlib.closing(sqlite3.connect(f"file:{svc.data_dir / 'tuning.db'}?mode=ro", uri=True)) as c:
        row = c.execute("SELECT pgid FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row and row[0], row
    return int(row[0])


def _wait_for_step(svc: ServiceProcess, job_id: str, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = svc.get(f"/v1/tunings.get/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        if (job["metrics"] or {}).get("current_step", 0) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached step {step}:\n{svc.output()[-3000:]}")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.mark.slow
def test_kill_9_of_the_service_mid_training(service_env: ServiceEnv) -> None:
    svc = service_env.start("kill9")
    pgid = None
    try:
        job_id = svc.create_job(model="tiny-llama", method="lora", hyperparameters=SMALL)["id"]
        _wait_for_step(svc, job_id, 2)
        pgid = _pgid(svc, job_id)
        svc.kill()  # SIGKILL: no shutdown code runs, the supervisor row is left as it was
        assert group_pids(pgid), "the trainer must outlive the service"
        svc.start()  # returns once /health answers, i.e. after recovery
        seen: list[tuple[float, str, bool]] = []
        gone_at = None
        while True:
            alive = bool(group_pids(pgid))
            if not alive and gone_at is None:
                gone_at = time.monotonic()
            status = svc.get(f"/v1/tunings.get/{job_id}").json()["status"]
            seen.append((time.monotonic(), status, alive))
            if status in TERMINAL:
                break
            assert time.monotonic() - seen[0][0] < 240, seen[-1]
            time.sleep(0.05)
        # Never a stale answer: running while the trainer runs, then the final status as soon as it is gone
        # (the supervisor polls every 50 ms; the final transaction follows the group's exit at once).
        assert seen[0][1] == "running" and seen[0][2]
        assert [s for _, s, _ in seen] == ["running"] * (len(seen) - 1) + ["succeeded"]
        assert gone_at is not None
        assert seen[-1][0] - gone_at < 1.5, seen[-1][0] - gone_at
        records = svc.get(f"/v1/tunings.logs/{job_id}?limit=1000").json()["data"]
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
        assert [r["step"] for r in records if r["type"] == "metrics"] == list(
            range(1, SMALL["max_steps"] + 1)
        )
        assert [r["type"] for r in records].count("completed") == 1
        assert not group_pids(pgid)
        lag = seen[-1][0] - gone_at
        print(f"recovered: {len(seen)} GETs after restart, final status {lag:.2f} s after the trainer exit")
    finally:
        svc.shutdown()
        if pgid:
            _kill_group(pgid)


@pytest.mark.slow
def test_kill_9_of_the_service_and_the_trainer(service_env: ServiceEnv) -> None:
    svc = service_env.start("kill9-both")
    pgid = None
    try:
        job_id = svc.create_job(
            model="tiny-llama", method="lora", hyperparameters={**SMALL, "max_steps": 500}
        )["id"]
        _wait_for_step(svc, job_id, 1)
        pgid = _pgid(svc, job_id)
        svc.kill()
        _kill_group(pgid)
        deadline = time.monotonic() + 10
        while group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        svc.start()
        job = svc.get(f"/v1/tunings.get/{job_id}").json()  # the first answer is already the settled one
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "service_restart" and job["error"]["log_tail"]
        assert group_pids(pgid) == []
    finally:
        svc.shutdown()
        if pgid:
            _kill_group(pgid)


def _events(svc: ServiceProcess, job_id: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    while True:
        page = svc.get(f"/v1/tunings.events/{job_id}?limit=1000&after={out[-1]['seq'] if out else 0}").json()
        out += page["data"]
        if not page["has_more"]:
            return out


# SFT, and a DPO job on preference pairs: a preference run resumes after a restart the same way.
KINDS = {
    "sft": {"method": "lora"},
    "dpo": {"method": "dpo", "adapter": "lora", "training_file": "data/preference_train.jsonl"},
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kill_9_of_both_resumes_from_the_checkpoint_when_the_job_asked_for_it(
    service_env: ServiceEnv, kind: str
) -> None:
    svc = service_env.start(f"kill9-resume-{kind}")
    pgid = None
    try:
        hp = {**SMALL, "max_steps": 120, "save_steps": 20}
        job = svc.create_job(model="tiny-llama", hyperparameters=hp, resume_on_restart=True, **KINDS[kind])
        job_id = job["id"]
        assert job["resume_on_restart"] is True
        _wait_for_step(svc, job_id, 22)  # checkpoint-20 is on disk (the trainer renames it into place)
        pgid = _pgid(svc, job_id)
        svc.kill()
        _kill_group(pgid)  # the trainer dies too: nothing is left to re-attach to
        deadline = time.monotonic() + 10
        while group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_pids(pgid) == []
        svc.start()
        first = svc.get(f"/v1/tunings.get/{job_id}").json()  # settled during recovery: queued again
        assert first["status"] in ("queued", "running") and first["error"] is None, first
        done = svc.wait_for(job_id, TERMINAL, timeout=240)
        assert done["status"] == "succeeded", done
        records = _events(svc, job_id)
        (resumed,) = [r for r in records if r["type"] == "resumed_after_restart"]
        step = resumed["step"]
        assert isinstance(step, int) and step >= 20 and step % 20 == 0
        # The second run started at the checkpoint's step, not 0, and trained exactly the rest.
        assert [r["start_step"] for r in records if r["type"] == "started"] == [0, step]
        later = [r["step"] for r in records if r["type"] == "metrics" and int(r["seq"]) > int(resumed["seq"])]
        assert later == list(range(step + 1, hp["max_steps"] + 1))
        statuses = [r["status"] for r in records if r["type"] == "status"]
        assert statuses == ["queued", "running", "queued", "running", "succeeded"]
        assert done["metrics"]["current_step"] == hp["max_steps"]
        if kind == "dpo":
            assert all("rewards_margin" in r for r in records if r["type"] == "metrics")
            assert done["metrics"]["rewards_accuracy"] is not None
        print(f"{kind}: resumed after kill -9 of service and trainer from checkpoint step {step}")
    finally:
        svc.shutdown()
        if pgid:
            _kill_group(pgid)


def test_cancel_kills_the_whole_group_within_grace_plus_1s(light_service_env: ServiceEnv) -> None:
    grace = 2.0
    svc = light_service_env.start("cancel-group", extra_env=fake_env(TUNING_CANCEL_GRACE_SECONDS=str(grace)))
    pgid = None
    try:
        job = fake_job(svc, "grandchildren?stubborn=1&children=3&steps=4000&delay=0.02")
        svc.wait_for(job["id"], "running")
        deadline = time.monotonic() + 30
        while not (svc.get(f"/v1/tunings.get/{job['id']}").json()["metrics"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        pgid = _pgid(svc, job["id"])
        assert len(group_pids(pgid)) == 4  # the trainer and its three stubborn children
        t0 = time.monotonic()
        assert svc.post(f"/v1/tunings.cancel/{job['id']}").json()["status"] == "cancelling"
        while group_pids(pgid):
            assert time.monotonic() - t0 < grace + 1.0, "processes of the group outlived grace + 1 s"
            time.sleep(0.02)
        gone = time.monotonic() - t0
        done = svc.wait_for(job["id"], TERMINAL, timeout=10)
        assert done["status"] == "cancelled"
        checkpoints = list((svc.data_dir / "jobs" / job["id"] / "checkpoints").glob("checkpoint-*"))
        assert checkpoints and (checkpoints[0] / "trainer_state.pt").exists()
        print(f"group of 4 gone {gone:.2f} s after cancel (grace {grace} s)")
    finally:
        svc.shutdown()
        if pgid:
            _kill_group(pgid)

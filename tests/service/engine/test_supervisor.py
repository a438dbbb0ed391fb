"""Supervision with the fake trainer (tests/service/fake_trainer.py): real subprocesses in their own process
groups, real signals, real files. Grace periods are 1 s."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.service.core_fixtures import (
    all_events,
    group_pids,
    kill_group,
    launches,
    make_settings,
    request,
    run,
    wait_status,
)
from tuning_service.engine.facade import JobManager
from tuning_service.engine.supervisor import trainer_config
from tuning_service.errors import APIError
from tuning_trainer.config import JobConfig

TERMINAL = {"succeeded", "failed", "cancelled"}


async def start(tmp_path: Path, **kw: object) -> tuple[JobManager, str]:
    m = await JobManager.start(make_settings(tmp_path, **kw))
    owner, _ = await m.create_key("test")
    return m, owner


def assert_status_records_end_the_log(records: list[dict], final: str) -> None:
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(1, len(records) + 1))
    statuses = [r["status"] for r in records if r["type"] == "status"]
    assert statuses[0] == "queued" and statuses[1] == "running" and statuses[-1] == final
    assert records[-1]["type"] == "status" and records[-1]["status"] == final


def test_completed_job_succeeds_with_metrics_and_adapter(tmp_path: Path) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path)
        try:
            job, created = await m.create(
                owner=owner, request=request("complete?steps=4"), idempotency_key=None
            )
            assert created and job["status"] == "queued"
            job = await wait_status(m, job["id"], owner, TERMINAL)
            assert job["status"] == "succeeded", job["error"]
            assert job["fine_tuned_model"] == f"ft:fake:complete?steps=4:lora:{job['id']}"
            assert Path(job["adapter_path"]).is_dir()
            assert job["trained_tokens"] == 40
            assert job["metrics"]["progress"] == 1.0 and job["metrics"]["current_step"] == 4
            assert job["metrics"]["total_steps"] == 4 and job["metrics"]["train_loss"] == 0.5
            # "auto" values resolved by the trainer replace the requested ones.
            assert job["hyperparameters"]["batch_size"] == 2 and job["hyperparameters"]["epochs"] == 1
            assert job["started_at"] is not None and job["duration"] is not None and job["error"] is None
            records = await all_events(m, job["id"], owner)
            assert_status_records_end_the_log(records, "succeeded")
            types = [r["type"] for r in records]
            assert (
                types.count("started") == 1 and types.count("metrics") == 4 and types.count("completed") == 1
            )
            assert {"line": "step 3/4"}.items() <= next(
                r for r in records if r.get("line") == "step 3/4"
            ).items()
            # The trainer's config.json: the JobConfig with output_dir = the job folder.
            cfg = json.loads((m.settings.jobs_dir / job["id"] / "config.json").read_text())
            assert cfg["output_dir"] == str(m.settings.jobs_dir / job["id"])
            assert cfg["training_file"] == str(tmp_path / "train.jsonl") and cfg["seed"] == 7
            assert len(launches(m.settings, job["id"])) == 1
        finally:
            await m.stop()

    run(body())


@pytest.mark.parametrize(
    ("mode", "code", "exit_code", "extra"),
    [
        ("fail", "invalid_data", 2, {"data_code": "invalid_json", "line": 3}),
        ("oom", "out_of_memory", 3, {"hint": "lower batch_size"}),
    ],
)
def test_failed_record_decides(tmp_path: Path, mode: str, code: str, exit_code: int, extra: dict) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path)
        try:
            job, _ = await m.create(owner=owner, request=request(mode), idempotency_key=None)
            job = await wait_status(m, job["id"], owner, TERMINAL)
            assert job["status"] == "failed"
            err = job["error"]
            assert err["code"] == code and err["exit_code"] == exit_code and err["signal"] is None
            assert extra.items() <= err.items()
            assert err["message"]
            if mode == "fail":
                assert "ERROR: bad data on line 3" in err["log_tail"]
            assert job["fine_tuned_model"] is None
            assert_status_records_end_the_log(await all_events(m, job["id"], owner), "failed")
        finally:
            await m.stop()

    run(body())


def test_crash_without_terminal_record(tmp_path: Path) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path)
        try:
            job, _ = await m.create(owner=owner, request=request("crash?steps=5"), idempotency_key=None)
            job = await wait_status(m, job["id"], owner, TERMINAL)
            err = job["error"]
            assert job["status"] == "failed" and err["code"] == "trainer_crashed"
            assert err["exit_code"] == 1 and err["signal"] is None
            assert err["log_tail"][-1] == "RuntimeError: boom" and "step 1/5" in err["log_tail"]
            assert "exited with code 1" in err["message"] and "RuntimeError: boom" in err["message"]
            assert job["metrics"]["current_step"] == 1
        finally:
            await m.stop()

    run(body())


def test_killed_by_signal(tmp_path: Path) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path)
        try:
            job, _ = await m.create(owner=owner, request=request("killself"), idempotency_key=None)
            job = await wait_status(m, job["id"], owner, TERMINAL)
            err = job["error"]
            assert job["status"] == "failed" and err["code"] == "trainer_killed"
            assert err["signal"] == "SIGKILL" and err["exit_code"] is None and "SIGKILL" in err["message"]
            assert "about to die" in err["log_tail"]
        finally:
            await m.stop()

    run(body())


def test_cancel_running_job_checkpoints_and_leaves_no_process(tmp_path: Path) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path, cancel_grace_seconds=5.0)
        pgid = None
        try:
            job, _ = await m.create(
                owner=owner, request=request("complete?steps=400&delay=0.02"), idempotency_key=None
            )
            job = await wait_status(m, job["id"], owner, "running")
            await wait_status_metrics(m, job["id"], owner)
            pgid = (await m.store.get_job(job["id"]))["pgid"]
            assert group_pids(pgid)
            t0 = time.monotonic()
            cancelling = await m.cancel(job["id"], owner=owner)
            assert cancelling["status"] == "cancelling"
            again = await m.cancel(job["id"], owner=owner)  # a second cancel is harmless
            assert again["status"] in ("cancelling", "cancelled")
            job = await wait_status(m, job["id"], owner, TERMINAL)
            assert time.monotonic() - t0 < 4.0  # it honoured SIGTERM: no SIGKILL needed
            assert job["status"] == "cancelled" and job["error"] is None
            assert group_pids(pgid) == []
            ckpts = list((m.settings.jobs_dir / job["id"] / "checkpoints").iterdir())
            assert len(ckpts) == 1 and (ckpts[0] / "trainer_state.pt").exists()
            records = await all_events(m, job["id"], owner)
            assert_status_records_end_the_log(records, "cancelled")
            assert [r["type"] for r in records if r["type"] in ("checkpoint", "interrupted")] == [
                "checkpoint", "interrupted",
            ]  # fmt: skip
            assert "checkpoint saved" in records[-1]["message"]
            with pytest.raises(APIError) as info:
                await m.cancel(job["id"], owner=owner)
            assert info.value.status_code == 409 and info.value.code == "job_terminal"
        finally:
            kill_group(pgid)
            await m.stop()

    run(body())


async def wait_status_metrics(m: JobManager, job_id: str, owner: str) -> None:
    from tests.service.core_fixtures import wait_until

    async def has_metrics() -> bool:
        return (await m.get(job_id, owner=owner))["metrics"] is not None

    await wait_until(has_metrics, 15, "metrics")


def test_sigterm_ignored_means_sigkill_after_grace(tmp_path: Path) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path, cancel_grace_seconds=1.0)
        pgid = None
        try:
            job, _ = await m.create(
                owner=owner, request=request("ignore_term?delay=0.02"), idempotency_key=None
            )
            await wait_status(m, job["id"], owner, "running")
            await wait_status_metrics(m, job["id"], owner)
            pgid = (await m.store.get_job(job["id"]))["pgid"]
            t0 = time.monotonic()
            await m.cancel(job["id"], owner=owner)
            await wait_status(m, job["id"], owner, "cancelling", timeout=1)
            job = await wait_status(m, job["id"], owner, TERMINAL)
            took = time.monotonic() - t0
            assert 0.9 <= took < 5.0
            assert job["status"] == "cancelled"
            assert group_pids(pgid) == []
            records = await all_events(m, job["id"], owner)
            assert "killed after the 1 s grace period" in records[-1]["message"]
        finally:
            kill_group(pgid)
            await m.stop()

    run(body())


def test_cancel_kills_grandchildren_that_ignore_sigterm(tmp_path: Path) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path, cancel_grace_seconds=1.0)
        pgid = None
        try:
            mode = "grandchildren?stubborn=1&children=2&steps=400&delay=0.02"
            job, _ = await m.create(owner=owner, request=request(mode), idempotency_key=None)
            await wait_status_metrics(m, job["id"], owner)
            pgid = (await m.store.get_job(job["id"]))["pgid"]
            assert len(group_pids(pgid)) == 3  # the trainer and its two children
            t0 = time.monotonic()
            await m.cancel(job["id"], owner=owner)
            job = await wait_status(m, job["id"], owner, TERMINAL)
            # The trainer checkpointed; its children ignored SIGTERM and were killed after the grace period.
            assert time.monotonic() - t0 >= 0.9
            assert job["status"] == "cancelled"
            assert "checkpoint saved" in (await all_events(m, job["id"], owner))[-1]["message"]
            assert group_pids(pgid) == []
        finally:
            kill_group(pgid)
            await m.stop()

    run(body())


def test_leftover_children_are_killed_after_the_trainer_exits(tmp_path: Path) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path, cancel_grace_seconds=1.0)
        pgid = None
        try:
            job, _ = await m.create(
                owner=owner, request=request("grandchildren?steps=3"), idempotency_key=None
            )
            await wait_status(m, job["id"], owner, "running")
            pgid = (await m.store.get_job(job["id"]))["pgid"]
            job = await wait_status(m, job["id"], owner, TERMINAL)
            assert job["status"] == "succeeded"  # the terminal record decides...
            assert group_pids(pgid) == []  # ...and the job ends only once its whole group is gone
        finally:
            kill_group(pgid)
            await m.stop()

    run(body())


def test_partial_and_malformed_lines(tmp_path: Path) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path)
        try:
            job, _ = await m.create(owner=owner, request=request("partial?hold=0.4"), idempotency_key=None)
            job = await wait_status(m, job["id"], owner, TERMINAL)
            assert job["status"] == "succeeded"
            records = await all_events(m, job["id"], owner)
            metrics = [r for r in records if r["type"] == "metrics"]
            # The line written in two pieces became exactly one record, with its own time.
            assert [(r["step"], r["loss"]) for r in metrics] == [(1, 2.0), (2, 1.5)]
            assert metrics[1]["time"] == 1.0
            skipped = [r for r in records if r["type"] == "log" and "skipped" in r["line"]]
            assert len(skipped) == 1 and "events.jsonl line 4" in skipped[0]["line"]
            assert "not valid JSON" in skipped[0]["line"]
            assert job["trained_tokens"] == 20
        finally:
            await m.stop()

    run(body())


def test_bad_trainer_command_fails_the_launch(tmp_path: Path) -> None:
    async def body() -> None:
        m, owner = await start(tmp_path, trainer_command=json.dumps([str(tmp_path / "no-such-launcher")]))
        try:
            job, _ = await m.create(owner=owner, request=request(), idempotency_key=None)
            job = await wait_status(m, job["id"], owner, TERMINAL)
            assert job["status"] == "failed" and job["error"]["code"] == "launch_failed"
            assert "could not launch the trainer" in job["error"]["message"]
        finally:
            await m.stop()

    run(body())


def test_trainer_config(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    stored = request(validation_file="sub/valid.jsonl", hyperparameters={"learning_rate": 0.001}).normalised()
    row = {"request": stored, "hyperparameters": stored.pop("hyperparameters"), "resume_from": None}
    cfg = trainer_config(s, row, tmp_path / "job")
    assert cfg["validation_file"] == str(tmp_path / "sub" / "valid.jsonl")
    assert cfg["hyperparameters"]["learning_rate"] == 0.001 and cfg["hyperparameters"]["epochs"] == "auto"
    assert (cfg["method"], cfg["adapter"]) == ("sft", "lora") and cfg["output_dir"] == str(tmp_path / "job")
    assert os.path.isabs(cfg["training_file"])
    # What the trainer will read is exactly a valid JobConfig: nothing was lost or added on the way.
    assert JobConfig.from_dict(cfg).model_dump() == cfg

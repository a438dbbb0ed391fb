"""Governance in the engine with the fake trainer (real processes, a real SQLite file): priority in the
queue, max_runtime_seconds (deadline_exceeded, then a resume), auto_retry of infrastructure failures only
(a crash, out of memory with a smaller micro-batch, a service restart), and per-key credentials reaching only
that key's trainers. The pure rules are tested at the bottom (retry.retry_plan, outcome's deadline)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import (
    all_events,
    kill_group,
    launches,
    make_settings,
    request,
    run,
    wait_status,
    wait_until,
)
from tuning_service.engine.facade import JobManager
from tuning_service.engine.outcome import decide_outcome
from tuning_service.engine.retry import retry_plan
from tuning_service.errors import APIError
from tuning_service.states import JobStatus


async def _create(m: JobManager, owner: str, mode: str, **extra: Any) -> str:
    job, _ = await m.create(owner=owner, request=request(mode, **extra), idempotency_key=None)
    return str(job["id"])


def _types(records: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] in types]


def test_a_higher_priority_job_created_later_starts_first(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=1))
        owner, _ = await m.create_key("a")
        try:
            blocker = await _create(m, owner, "complete?steps=3000&delay=0.01")
            await wait_status(m, blocker, owner, "running")
            low = await _create(m, owner, "complete?steps=2")
            high = await _create(m, owner, "complete?steps=2", priority=5)
            assert (await m.get(low, owner=owner))["queue_position"] == 2
            job = await m.get(high, owner=owner)
            assert job["queue_position"] == 1 and job["priority"] == 5
            await m.cancel(blocker, owner=owner)
            await wait_status(m, high, owner, "succeeded")
            await wait_status(m, low, owner, "succeeded")
            rows = [await m.store.get_job(j) for j in (high, low)]  # unrounded times
            assert rows[0] and rows[1] and rows[0]["finished_at"] <= rows[1]["started_at"]
        finally:
            await m.stop()

    run(body())


def test_a_create_over_max_queued_jobs_is_429_and_names_the_limit(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        owner, _ = await m.create_key("a", {"max_queued_jobs": 2})
        try:
            for _ in range(2):
                await _create(m, owner, "complete")
            with pytest.raises(APIError) as exc:
                await _create(m, owner, "complete")
            assert exc.value.status_code == 429 and exc.value.code == "quota_exceeded"
            assert exc.value.param == "max_queued_jobs" and "max_queued_jobs = 2" in exc.value.message
            jobs, _ = await m.list(owner=owner, status=None, after=None, limit=10)
            assert len(jobs) == 2
            assert len(list(m.settings.jobs_dir.glob("*"))) == 0  # no folder of a job that was not made
            usage = await m.usage(owner)
            assert usage["queued_jobs"] == 2 and usage["limits"]["max_queued_jobs"] == 2
        finally:
            await m.stop()

    run(body())


def test_the_deadline_checkpoints_fails_deadline_exceeded_and_a_resume_finishes(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=1, max_runtime_seconds=60))
        owner, _ = await m.create_key("a")
        try:
            job_id = await _create(m, owner, "complete?steps=300&delay=0.01", max_runtime_seconds=2)
            failed = await wait_status(m, job_id, owner, "failed", timeout=30)
            error = failed["error"]
            assert error["code"] == "deadline_exceeded", error
            assert "max_runtime_seconds (2 s)" in error["message"]
            assert error["checkpoint_path"] and Path(error["checkpoint_path"]).is_dir()
            step = int(Path(error["checkpoint_path"]).name.split("-")[-1])
            assert 0 < step < 300
            assert failed["max_runtime_seconds"] == 2
            resumed = await m.resume(job_id, owner=owner)  # a fresh two seconds
            assert resumed["status"] == "queued"
            done = await wait_status(m, job_id, owner, "succeeded", timeout=30)
            assert done["error"] is None
            started = _types(await all_events(m, job_id, owner), "started")
            assert [r["start_step"] for r in started] == [0, step]
            # A job created without a limit gets the service's default.
            other = await m.get(await _create(m, owner, "complete?steps=1"), owner=owner)
            assert other["max_runtime_seconds"] == 60
        finally:
            await m.stop()

    run(body())


def test_auto_retry_resumes_a_crashed_run_from_its_checkpoint(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=1))
        owner, _ = await m.create_key("a")
        try:
            job_id = await _create(
                m, owner, "crash?once=1&crash_at=3&save=2&steps=6&delay=0.05", auto_retry=2
            )
            done = await wait_status(m, job_id, owner, "succeeded", timeout=30)
            assert done["retries"] == 1 and done["auto_retry"] == 2
            records = await all_events(m, job_id, owner)
            (retry,) = _types(records, "retry")
            assert (
                retry["attempt"] == 1 and retry["max_retries"] == 2 and retry["reason"] == "trainer_crashed"
            )
            assert retry["step"] == 2 and retry["checkpoint"] == "checkpoints/checkpoint-2"
            assert [r["start_step"] for r in _types(records, "started")] == [0, 2]
            assert len(launches(m.settings, job_id)) == 2
            statuses = [r["status"] for r in _types(records, "status")]
            assert statuses == ["queued", "running", "queued", "running", "succeeded"]
        finally:
            await m.stop()

    run(body())


def test_auto_retry_gives_up_after_its_count_and_never_retries_a_user_error(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=2))
        owner, _ = await m.create_key("a")
        try:
            crash = await _create(m, owner, "crash?steps=6", auto_retry=1)
            bad = await _create(m, owner, "fail", auto_retry=3)
            failed = await wait_status(m, crash, owner, "failed", timeout=30)
            assert failed["error"]["code"] == "trainer_crashed" and failed["retries"] == 1
            assert len(launches(m.settings, crash)) == 2
            user = await wait_status(m, bad, owner, "failed", timeout=30)
            assert user["error"]["code"] == "invalid_data" and user["retries"] == 0
            assert len(launches(m.settings, bad)) == 1
            assert _types(await all_events(m, bad, owner), "retry") == []
        finally:
            await m.stop()

    run(body())


def test_out_of_memory_is_retried_with_the_smaller_micro_batch_the_trainer_suggests(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=1))
        owner, _ = await m.create_key("a")
        try:
            job_id = await _create(
                m,
                owner,
                "oom?until_batch=1&steps=2",
                auto_retry=3,
                hyperparameters={"epochs": 1, "batch_size": 4, "gradient_accumulation_steps": 2},
            )
            done = await wait_status(m, job_id, owner, "succeeded", timeout=30)
            retries = _types(await all_events(m, job_id, owner), "retry")
            assert [(r["reason"], r["batch_size"]) for r in retries] == [
                ("out_of_memory", 2),
                ("out_of_memory", 1),
            ]
            config = json.loads((m.settings.jobs_dir / job_id / "config.json").read_text())
            # The effective batch is kept: 4 x 2 = 2 x 4 = 1 x 8.
            assert config["hyperparameters"]["batch_size"] == 1
            assert config["hyperparameters"]["gradient_accumulation_steps"] == 8
            assert done["retries"] == 2
        finally:
            await m.stop()

    run(body())


def test_a_trainer_lost_in_a_service_restart_is_retried(tmp_path: Path) -> None:
    async def body() -> None:
        settings = make_settings(tmp_path, max_concurrent_jobs=1)
        m = await JobManager.start(settings)
        owner, _ = await m.create_key("a")
        job_id = await _create(m, owner, "complete?steps=400&delay=0.01&save=5", auto_retry=1)
        await wait_until(
            lambda: _has_checkpoint(settings.jobs_dir / job_id), what="a checkpoint of the first run"
        )
        row = await m.store.get_job(job_id)
        assert row is not None
        await m.stop()  # the service goes; its trainer is then lost with it
        kill_group(row["pgid"])
        await asyncio.sleep(0.2)
        m = await JobManager.start(settings)
        try:
            done = await wait_status(m, job_id, owner, "succeeded", timeout=30)
            assert done["retries"] == 1
            (retry,) = _types(await all_events(m, job_id, owner), "retry")
            assert retry["reason"] == "service_restart" and retry["step"] >= 5
        finally:
            await m.stop()

    run(body())


async def _has_checkpoint(job_dir: Path) -> bool:
    return any((job_dir / "checkpoints").glob("checkpoint-*"))


def test_a_keys_credentials_reach_only_its_own_trainers_and_no_response(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=2))
        alice, _ = await m.create_key("alice")
        bob, _ = await m.create_key("bob")
        secret = {"hf_token": "hf_ALICE_SECRET", "wandb_api_key": "wandb-ALICE-SECRET"}
        assert await m.set_key_credentials("alice", dict(secret)) == alice
        try:
            mine = await _create(m, alice, "complete?steps=2")
            theirs = await _create(m, bob, "complete?steps=2")
            await wait_status(m, mine, alice, "succeeded")
            await wait_status(m, theirs, bob, "succeeded")
            seen = (m.settings.jobs_dir / mine / "secrets-seen.jsonl").read_text()
            assert json.loads(seen) == {"HF_TOKEN": "hf_ALICE_SECRET", "WANDB_API_KEY": "wandb-ALICE-SECRET"}
            assert json.loads((m.settings.jobs_dir / theirs / "secrets-seen.jsonl").read_text()) == {}
            assert not (m.settings.jobs_dir / mine / ".secrets.json").exists()  # only while a run is followed
            shown = json.dumps([await m.get(mine, owner=alice), await all_events(m, mine, alice)])
            shown += json.dumps(await m.list_keys())
            assert "SECRET" not in shown
        finally:
            await m.stop()

    run(body())


# ---- the rules --------------------------------------------------------------------------------------------


def _row(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "ftjob-x",
        "model": "m",
        "status": "running",
        "request": {"auto_retry": 2, "max_runtime_seconds": 10},
        "retries": 0,
        "hyperparameters": {"batch_size": 8, "gradient_accumulation_steps": 1},
        "terminal_record": None,
        "cancel_requested_at": None,
        "deadline_requested_at": None,
        "adapter_path": None,
    }
    row.update(kw)
    return row


@pytest.mark.parametrize(
    ("code", "row", "retried"),
    [
        ("trainer_crashed", {}, True),
        ("trainer_killed", {}, True),
        ("service_restart", {}, True),
        ("executor_lost", {}, False),  # the run may still be going: never a second one beside it
        ("out_of_memory", {}, True),
        ("invalid_data", {}, False),
        ("model_not_found", {}, False),
        ("training_error", {}, False),
        ("deadline_exceeded", {}, False),
        ("trainer_crashed", {"retries": 2}, False),  # used up
        ("trainer_crashed", {"status": "cancelling", "cancel_requested_at": 1.0}, False),
        ("trainer_crashed", {"deadline_requested_at": 1.0}, False),
        ("trainer_crashed", {"request": {}}, False),  # auto_retry 0
    ],
)
def test_which_failures_are_retried(code: str, row: dict[str, Any], retried: bool) -> None:
    plan = retry_plan(_row(**row), {"code": code, "message": "m"}, {})
    assert (plan is not None) is retried
    if plan is not None:
        fields, record, message = plan.fields, plan.record, plan.message
        assert fields["retries"] == 1 and fields["resume_from"] is None and record["step"] is None
        assert "from the beginning" in message


@pytest.mark.parametrize(
    ("hp", "suggested", "expected"),
    [
        (
            {"batch_size": 8, "gradient_accumulation_steps": 1},
            4,
            {"batch_size": 4, "gradient_accumulation_steps": 2},
        ),
        (
            {"batch_size": 8, "gradient_accumulation_steps": 3},
            2,
            {"batch_size": 2, "gradient_accumulation_steps": 12},
        ),
        (
            {
                "batch_size": 4,
                "gradient_accumulation_steps": 1,
                "packing": True,
                "max_tokens_per_batch": 4096,
            },
            2,
            {
                "batch_size": 2,
                "gradient_accumulation_steps": 2,
                "packing": True,
                "max_tokens_per_batch": 2048,
            },
        ),
        ({"batch_size": 8, "gradient_accumulation_steps": 1}, 3, None),  # 8 / 3 would change the batch
        ({"batch_size": 8, "gradient_accumulation_steps": 4096}, 4, None),  # 4096 is accumulation's limit
        ({"batch_size": 1, "gradient_accumulation_steps": 1}, None, None),
    ],
)
def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(
    hp: dict[str, Any], suggested: int | None, expected: dict[str, Any] | None
) -> None:
    row = _row(hyperparameters=hp, terminal_record={"type": "failed", "suggested_batch_size": suggested})
    plan = retry_plan(
        row, {"code": "out_of_memory", "message": "oom"}, {4: Path("/j/checkpoints/checkpoint-4")}
    )
    assert plan is not None
    fields, record = plan.fields, plan.record
    assert plan.discard_checkpoints is bool((expected or {}).get("packing"))
    assert fields.get("hyperparameters") == expected
    assert record["batch_size"] == (None if expected is None else expected["batch_size"])
    if (expected or {}).get("packing"):  # other bins: the old bins' checkpoint cannot be continued
        assert record["checkpoint"] is None and fields["resume_from"] is None
    else:
        assert record["checkpoint"] == "checkpoints/checkpoint-4"
        assert fields["resume_from"].endswith("checkpoint-4")


def test_the_outcome_at_the_deadline() -> None:
    row = _row(deadline_requested_at=5.0)
    term = {
        "type": "interrupted",
        "step": 7,
        "checkpoint_path": "/j/checkpoints/checkpoint-7",
        "exit_code": 4,
    }
    status, message, fields = decide_outcome(
        {**row, "terminal_record": term}, exit_code=1, killed_by_us=False, log_tail=[]
    )
    assert status is JobStatus.FAILED and fields["error"]["code"] == "deadline_exceeded"
    assert fields["error"]["checkpoint_path"] == term["checkpoint_path"] and "step 7" in message
    status, message, fields = decide_outcome(
        row, exit_code=-9, killed_by_us=True, log_tail=[], grace_seconds=3
    )
    assert fields["error"]["code"] == "deadline_exceeded" and "killed after the 3 s grace period" in message
    # It finished first: the run's own verdict wins. A cancel asked for since wins over the deadline.
    done = {"type": "completed", "adapter_path": "/a"}
    assert decide_outcome({**row, "terminal_record": done}, exit_code=0, killed_by_us=False, log_tail=[])[
        0
    ] is (JobStatus.SUCCEEDED)
    cancelled = {**row, "status": "cancelling", "cancel_requested_at": 6.0, "terminal_record": term}
    assert decide_outcome(cancelled, exit_code=1, killed_by_us=False, log_tail=[])[0] is JobStatus.CANCELLED


def test_a_packed_retry_that_starts_over_puts_the_old_checkpoints_aside(tmp_path: Path) -> None:
    """Another token budget makes other bins: the old checkpoints can be continued by no run, so the retry
    starts from step 0 and a later resume must not pick them up."""

    async def body() -> None:
        queued_only = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        owner, _ = await queued_only.create_key("a")
        job_id = await _create(
            queued_only,
            owner,
            "oom?until_batch=1&steps=2",
            auto_retry=1,
            hyperparameters={"epochs": 1, "batch_size": 2, "packing": True, "max_tokens_per_batch": 64},
        )
        old = queued_only.settings.jobs_dir / job_id / "checkpoints" / "checkpoint-1"
        old.mkdir(parents=True)  # as if an earlier run had saved one
        (old / "trainer_state.pt").write_text("{}")
        await queued_only.stop()
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=1))
        try:
            done = await wait_status(m, job_id, owner, "succeeded", timeout=30)
            assert done["retries"] == 1
            (retry,) = _types(await all_events(m, job_id, owner), "retry")
            assert retry["step"] is None and retry["checkpoint"] is None
            assert (m.settings.jobs_dir / job_id / "checkpoints.before-retry-1" / "checkpoint-1").is_dir()
            config = json.loads((m.settings.jobs_dir / job_id / "config.json").read_text())
            assert config["resume_from"] is None and config["hyperparameters"]["max_tokens_per_batch"] == 32
        finally:
            await m.stop()

    run(body())

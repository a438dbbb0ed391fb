"""The JobManager facade: the public job shape, ownership, idempotency, admission, cancel/delete rules, the
records API (one ownership check, then pages and waits), API keys. Jobs stay queued here
(max_concurrent_jobs=0) unless a test runs them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import all_events, make_settings, request, run
from tuning_service.engine.facade import JobManager
from tuning_service.errors import APIError
from tuning_service.schema.jobs import TuningJob

# The job object's fields, in order, as the document defines them (the webhook ones only on jobs that have
# a webhook: they are the model's optional fields).
PUBLIC_FIELDS = [name for name, f in TuningJob.model_fields.items() if f.is_required()]


async def idle_manager(tmp_path: Path, **kw: Any) -> tuple[JobManager, str, str]:
    m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0, **kw))
    a, _ = await m.create_key("a")
    b, _ = await m.create_key("b")
    return m, a, b


def test_submit_get_list_public_shape(tmp_path: Path) -> None:
    async def body() -> None:
        m, a, b = await idle_manager(tmp_path)
        try:
            body_ = request(suffix="mine", metadata={"team": "x"}, hyperparameters={"learning_rate": 0.001})
            job, created = await m.create(owner=a, request=body_, idempotency_key=None)
            assert created and list(job) == PUBLIC_FIELDS
            assert job["object"] == "tuning.job" and job["status"] == "queued" and job["queue_position"] == 1
            assert job["model"] == "fake:complete" and job["training_file"] == "train.jsonl"
            assert job["suffix"] == "mine" and job["metadata"] == {"team": "x"} and job["seed"] == 7
            assert job["adapter"] == "lora" and isinstance(job["created_at"], int)
            # Requested hyperparameters, defaults filled in; "auto" stays until the trainer resolves it.
            hp = job["hyperparameters"]
            assert hp["learning_rate"] == 0.001 and hp["epochs"] == "auto" and hp["lora_r"] == 16
            assert job["metrics"] is None and job["error"] is None and job["started_at"] is None
            second, _ = await m.create(owner=a, request=request(), idempotency_key=None)
            assert second["queue_position"] == 2
            assert await m.get(job["id"], owner=a) == job
            listed, more = await m.list(owner=a, status=None, after=None, limit=10)
            assert [j["id"] for j in listed] == [second["id"], job["id"]] and not more
            assert [j["queue_position"] for j in listed] == [2, 1]
            # Another key sees nothing of it: 404, the same error as an unknown id.
            for call in (m.get, m.cancel, m.delete):
                with pytest.raises(APIError) as info:
                    await call(job["id"], owner=b)
                assert info.value.status_code == 404 and info.value.code == "job_not_found"
            with pytest.raises(APIError) as info:
                await m.records(job["id"], owner=b)
            assert info.value.status_code == 404
            with pytest.raises(APIError) as unknown:
                await m.get("ftjob-000000000000000000000000", owner=a)
            assert (unknown.value.status_code, unknown.value.code) == (404, "job_not_found")
            assert (await m.list(owner=b, status=None, after=None, limit=10)) == ([], False)
            counts = {
                "active_jobs": 2,
                "running_jobs": 0,
                "queued_jobs": 2,
                "paused_jobs": 0,
                "total_jobs": 2,
            }
            assert await m.health() == counts
            # A paused job holds no trainer and no slot: reported apart, not as active work.
            await m.pause(second["id"], owner=a)
            counts = {
                "active_jobs": 1,
                "running_jobs": 0,
                "queued_jobs": 1,
                "paused_jobs": 1,
                "total_jobs": 2,
            }
            assert await m.health() == counts
        finally:
            await m.stop()

    run(body())


def test_idempotency(tmp_path: Path) -> None:
    async def body() -> None:
        m, a, b = await idle_manager(tmp_path)
        try:
            results = await asyncio.gather(
                *(m.create(owner=a, request=request(), idempotency_key="k-1") for _ in range(20))
            )
            assert len({job["id"] for job, _ in results}) == 1
            assert sum(created for _, created in results) == 1
            with pytest.raises(APIError) as info:
                await m.create(owner=a, request=request(suffix="other"), idempotency_key="k-1")
            err = info.value
            assert err.status_code == 409 and err.code == "idempotency_key_reused"
            assert results[0][0]["id"] in err.message
            # Keys are scoped per API key.
            theirs, created = await m.create(owner=b, request=request(), idempotency_key="k-1")
            assert created and theirs["id"] != results[0][0]["id"]
            assert (await m.health())["total_jobs"] == 2
        finally:
            await m.stop()

    run(body())


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"training_file": "missing.jsonl"}, 404, "file_not_found", "training_file"),
        ({"training_file": "../outside.jsonl"}, 400, "invalid_path", "training_file"),
        ({"validation_file": "/etc/passwd"}, 400, "invalid_path", "validation_file"),
        ({"training_file": "file-" + "0" * 24}, 404, "file_not_found", "training_file"),
        ({"training_file": "bad.jsonl"}, 422, "no_assistant_turn", "training_file"),
        ({"webhook_url": "http://127.0.0.1:9/hook"}, 403, "webhook_url_not_allowed", "webhook_url"),
        ({"webhook_url": "https://example.com/hook"}, 409, "webhook_secret_missing", "webhook_url"),
    ],
)
def test_admission_refuses_what_the_schema_cannot_see(
    tmp_path: Path, change: dict[str, Any], status: int, code: str, param: str
) -> None:
    # The body is schema-valid (request() validates it as the route does); this server's state refuses it.
    async def body() -> None:
        m, a, _ = await idle_manager(tmp_path)
        (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
        try:
            with pytest.raises(APIError) as info:
                await m.create(owner=a, request=request(**change), idempotency_key=None)
            err = info.value
            assert (err.status_code, err.code, err.param) == (status, code, param), err.message
            assert (await m.health())["total_jobs"] == 0  # nothing stored
        finally:
            await m.stop()

    run(body())


def test_the_job_is_stored_once_as_admitted(tmp_path: Path) -> None:
    async def body() -> None:
        m, a, _ = await idle_manager(tmp_path, gpus=["0"])
        try:
            job, _ = await m.create(
                owner=a, request=request(training_file="./train.jsonl"), idempotency_key=None
            )
            row = await m.store.get_job(job["id"])
            assert row is not None and row["num_gpus"] == 1
            assert job["training_file"] == row["request"]["training_file"] == "train.jsonl"  # normal form
            # The hyperparameters live in their own column only (the request's copy is not kept).
            assert "hyperparameters" not in row["request"] and row["hyperparameters"]["epochs"] == 1
        finally:
            await m.stop()

    run(body())


def test_cancel_and_delete_rules(tmp_path: Path) -> None:
    async def body() -> None:
        m, a, _ = await idle_manager(tmp_path)
        try:
            job, _ = await m.create(owner=a, request=request(), idempotency_key=None)
            (m.settings.jobs_dir / job["id"]).mkdir(parents=True)
            with pytest.raises(APIError) as info:
                await m.delete(job["id"], owner=a)
            assert info.value.status_code == 409 and info.value.code == "job_not_terminal"
            cancelled = await m.cancel(job["id"], owner=a)  # queued -> cancelled at once
            assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
            assert cancelled["queue_position"] is None
            with pytest.raises(APIError) as info:
                await m.cancel(job["id"], owner=a)
            assert info.value.status_code == 409 and info.value.code == "job_terminal"
            records = await all_events(m, job["id"], a)
            assert [(r["seq"], r["status"]) for r in records] == [(1, "queued"), (2, "cancelled")]
            handle = await m.records(job["id"], owner=a)
            assert await handle.is_terminal()
            assert await m.delete(job["id"], owner=a) == {
                "id": job["id"],
                "object": "tuning.job",
                "deleted": True,
            }
            assert not (m.settings.jobs_dir / job["id"]).exists()
            with pytest.raises(APIError) as info:
                await m.get(job["id"], owner=a)
            assert info.value.status_code == 404
            assert await handle.is_terminal()  # a deleted job never streams forever
        finally:
            await m.stop()

    run(body())


def test_waiting_for_records(tmp_path: Path) -> None:
    async def body() -> None:
        m, a, _ = await idle_manager(tmp_path)
        other = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        try:
            job, _ = await m.create(owner=a, request=request(), idempotency_key=None)
            records = await m.records(job["id"], owner=a)
            t0 = time.monotonic()
            await records.wait(after=0, timeout=5)  # seq 1 exists: at once
            await records.wait(after=1, timeout=0.3)  # nothing new: the timeout
            assert 0.25 <= time.monotonic() - t0 < 1.0

            async def cancel_later(mgr: JobManager, job_id: str) -> float:
                await asyncio.sleep(0.3)
                await mgr.cancel(job_id, owner=a)
                return time.monotonic()

            # A record written by this worker wakes the waiter at once...
            task = asyncio.create_task(cancel_later(m, job["id"]))
            await records.wait(after=1, timeout=5)
            assert time.monotonic() - await task < 0.05
            # ...and one written through another worker (another connection) within the 0.1 s poll.
            job2, _ = await m.create(owner=a, request=request(), idempotency_key=None)
            records2 = await m.records(job2["id"], owner=a)
            task = asyncio.create_task(cancel_later(other, job2["id"]))
            await records2.wait(after=1, timeout=5)
            assert time.monotonic() - await task < 0.15
            assert (await records2.page(after=1, limit=10))[0][0]["status"] == "cancelled"
        finally:
            await other.stop()
            await m.stop()

    run(body())


def test_api_keys(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        try:
            key_id, plaintext = await m.create_key("ci")
            assert key_id.startswith("key_") and len(plaintext) > 30
            assert await m.verify_key(plaintext) == key_id
            assert await m.verify_key(plaintext + "x") is None and await m.verify_key("") is None
            ids = await m.ensure_env_keys(["test-key-001", "test-key-002"])
            assert ids == await m.ensure_env_keys(["test-key-001", "test-key-002"])  # stable: same owner
            assert await m.verify_key("test-key-001") == ids[0]
            keys = await m.list_keys()
            assert [k["name"] for k in keys] == ["ci", "env-1", "env-2"]
            fields = {"id", "name", "created_at", "revoked_at", "webhook_url", "has_webhook_secret"}
            fields |= {
                "max_running_jobs",
                "max_queued_jobs",
                "max_gpu_hours",
                "has_wandb_api_key",
                "has_hf_token",
            }
            assert all(set(k) == fields for k in keys)  # never a hash or a secret
            assert await m.revoke_key("ci") and not await m.revoke_key("ci")
            assert await m.verify_key(plaintext) is None
            assert await m.revoke_key(ids[1]) and await m.verify_key("test-key-002") is None
            assert not await m.revoke_key("no-such-key")
        finally:
            await m.stop()
        # Only hashes are stored.
        raw = (tmp_path / "data" / "tuning.db").read_bytes() + b"".join(
            p.read_bytes() for p in (tmp_path / "data").glob("tuning.db-*")
        )
        assert plaintext.encode() not in raw and b"test-key-001" not in raw

    run(body())


def test_failed_start_up_exits_instead_of_hanging(tmp_path: Path) -> None:
    # A database that cannot be opened must surface as an error and let the process exit: an aiosqlite
    # connection left open keeps a non-daemon thread alive and the process would hang.
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    (data / "tuning.db").write_bytes(b"this is not a sqlite database" * 100)
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from tests.service.core_fixtures import make_settings\n"
        "from tuning_service.engine.facade import JobManager\n"
        f"asyncio.run(JobManager.start(make_settings(Path({str(tmp_path)!r}))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    assert proc.returncode != 0
    assert "DatabaseError" in proc.stderr or "not a database" in proc.stderr

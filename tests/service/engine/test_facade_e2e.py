"""The real thing through the JobManager: `accelerate launch -m tuning_trainer` on the tiny local model, on
CPU. One job trains to `succeeded`; one is cancelled mid-training and leaves a checkpoint and no process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service.core_fixtures import (
    all_events,
    group_pids,
    kill_group,
    make_settings,
    run,
    wait_status,
    wait_until,
)
from tuning_service.engine.facade import JobManager
from tuning_service.schema.jobs import CreateTuningRequest

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed", "cancelled"}


def real_settings(tmp_path: Path, repo_root: Path, tiny_model_dir: Path, **kw: object):  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path,
        files_root=repo_root,
        models_dir=tiny_model_dir.parent,
        trainer_command="",  # the real launcher
        cpu_threads=1,
        **kw,
    )


def body_for(tiny_model_dir: Path, **hp: object) -> CreateTuningRequest:
    return CreateTuningRequest.model_validate(
        {
            "model": tiny_model_dir.name,
            "training_file": "data/train.jsonl",
            "validation_file": "data/valid.jsonl",
            "hyperparameters": {
                "epochs": 1,
                "batch_size": 4,
                "max_seq_length": 64,
                "learning_rate": 1e-3,
                **hp,
            },
            "method": "lora",
            "suffix": "e2e",
            "seed": 1,
            "metadata": {},
        }
    )


def test_real_training_succeeds(tmp_path: Path, repo_root: Path, tiny_model_dir: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(real_settings(tmp_path, repo_root, tiny_model_dir))
        owner, _ = await m.create_key("e2e")
        try:
            job, _ = await m.create(
                owner=owner, request=body_for(tiny_model_dir, max_steps=12), idempotency_key=None
            )
            await wait_status(m, job["id"], owner, {"running"} | TERMINAL, timeout=10)
            done = await wait_status(m, job["id"], owner, TERMINAL, timeout=240)
            assert done["status"] == "succeeded", json.dumps(done["error"], indent=1)
            assert done["fine_tuned_model"] == f"ft:{tiny_model_dir.name}:e2e:{job['id']}"
            adapter = Path(done["adapter_path"])
            assert (adapter / "adapter_config.json").exists() and (
                adapter / "adapter_model.safetensors"
            ).exists()
            metrics = done["metrics"]
            assert metrics["progress"] == 1.0 and metrics["current_step"] == metrics["total_steps"] == 12
            assert metrics["train_loss"] is not None and metrics["tokens_per_second"]
            assert done["trained_tokens"] > 0 and done["hyperparameters"]["batch_size"] == 4
            records = await all_events(m, job["id"], owner)
            types = [r["type"] for r in records]
            assert types.count("started") == 1 and types.count("completed") == 1 and "log" in types
            assert types.count("metrics") >= 12
            assert records[-1]["type"] == "status" and records[-1]["status"] == "succeeded"
        finally:
            await m.stop()

    run(body())


def test_real_training_cancelled_with_checkpoint(
    tmp_path: Path, repo_root: Path, tiny_model_dir: Path
) -> None:
    async def body() -> None:
        m = await JobManager.start(
            real_settings(tmp_path, repo_root, tiny_model_dir, cancel_grace_seconds=30.0)
        )
        owner, _ = await m.create_key("e2e")
        pgid = None
        try:
            job, _ = await m.create(
                owner=owner, request=body_for(tiny_model_dir, epochs=50), idempotency_key=None
            )

            async def training() -> bool:
                row = await m.store.get_job(job["id"])
                # Queued until the scheduler's claim commits (reads never wait for a transaction in flight).
                assert row is not None and row["status"] in ("queued", "running"), row and row["error"]
                return ((row["metrics"] or {}).get("current_step") or 0) >= 3

            await wait_until(training, 240, "training to reach step 3")
            pgid = (await m.store.get_job(job["id"]))["pgid"]
            assert len(group_pids(pgid)) >= 2  # the launcher and the training child
            assert (await m.cancel(job["id"], owner=owner))["status"] == "cancelling"
            done = await wait_status(m, job["id"], owner, TERMINAL, timeout=60)
            assert done["status"] == "cancelled"
            assert group_pids(pgid) == []
            ckpts = list((m.settings.jobs_dir / job["id"] / "checkpoints").glob("checkpoint-*"))
            assert ckpts and (ckpts[0] / "adapter_config.json").exists()
            records = await all_events(m, job["id"], owner)
            assert any(r["type"] == "interrupted" for r in records)
            assert "checkpoint saved" in records[-1]["message"]
        finally:
            kill_group(pgid)
            await m.stop()

    run(body())

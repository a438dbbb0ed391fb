"""Fine-tunes and GPU leases in the store (storage/models.py): a lease is never handed out twice, not even
against a job's claim, and is released only by the process that holds it."""

from __future__ import annotations

import time
from pathlib import Path

from tests.service.core_fixtures import run
from tests.service.storage.test_store import add_job, open_store


def test_gpu_leases_and_job_claims_never_share_a_gpu(tmp_path: Path) -> None:
    async def body() -> None:
        store = await open_store(tmp_path / "t.db")
        now = time.time()
        assert (
            await store.lease_free_gpu(
                gpus=["0", "1"], holder="inference", pid=None, proc_start_time=None, now=now
            )
            == "0"
        )
        # The same holder again: its lease, now naming its process.
        assert (
            await store.lease_free_gpu(
                gpus=["0", "1"], holder="inference", pid=42, proc_start_time=7, now=now
            )
            == "0"
        )
        assert [(x["gpu"], x["pid"]) for x in await store.gpu_leases()] == [("0", 42)]
        # A job needing one GPU gets the other one; a second waits.
        await add_job(store, num_gpus=1)
        second = await add_job(store, num_gpus=1)
        claimed = await store.claim_next(supervisor_id="s", max_concurrent=4, gpus=["0", "1"], now=now)
        assert claimed is not None and claimed["gpu_lease"] == ["1"]
        assert await store.claim_next(supervisor_id="s", max_concurrent=4, gpus=["0", "1"], now=now) is None
        assert (
            await store.lease_free_gpu(gpus=["0", "1"], holder="other", pid=1, proc_start_time=1, now=now)
            is None
        )
        # Only the holding process's release counts; then the waiting job gets GPU 0.
        assert await store.release_gpu_lease("0", pid=41) is False
        assert await store.release_gpu_lease("0", pid=42) is True
        got = await store.claim_next(supervisor_id="s", max_concurrent=4, gpus=["0", "1"], now=now)
        assert got is not None and got["id"] == second["id"] and got["gpu_lease"] == ["0"]
        await store.close()

    run(body())

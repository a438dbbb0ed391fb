"""Fine-tuned models (a succeeded job's adapter, served by the inference routes) and GPU leases held by
something other than a job (the inference worker)."""

from __future__ import annotations

from typing import Any

from ..states import JobStatus
from .db import Database
from .jobs import _ACTIVE_SQL

_FINE_TUNE_COLUMNS = (
    "id, owner, model, fine_tuned_model, adapter_path, json_extract(request, '$.method') AS method,"
    " json_extract(request, '$.adapter') AS adapter,"
    " json_extract(request, '$.suffix') AS suffix, finished_at"
)
_SERVABLE = (
    f"status = '{JobStatus.SUCCEEDED.value}' AND adapter_path IS NOT NULL AND model_deleted_at IS NULL"
)


class ModelTables(Database):
    async def list_fine_tunes(self, *, owner: str) -> list[dict[str, Any]]:
        """The owner's servable fine-tunes (succeeded, adapter not deleted), oldest first."""
        return await self.all(
            f"SELECT {_FINE_TUNE_COLUMNS} FROM jobs WHERE owner = ? AND {_SERVABLE} ORDER BY ord", (owner,)
        )

    async def get_fine_tune(self, job_id: str, *, deleted_too: bool = False) -> dict[str, Any] | None:
        """A servable fine-tune by its job id (any owner: the caller checks ownership); with `deleted_too`,
        also one whose adapter was deleted (its base is still there)."""
        where = f"status = '{JobStatus.SUCCEEDED.value}'" if deleted_too else _SERVABLE
        return await self.one(f"SELECT {_FINE_TUNE_COLUMNS} FROM jobs WHERE id = ? AND {where}", (job_id,))

    async def delete_fine_tune(self, job_id: str, *, owner: str, now: float) -> bool:
        """Mark the owner's fine-tune deleted; False when there is no such servable fine-tune of theirs."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                f"UPDATE jobs SET model_deleted_at = ? WHERE id = ? AND owner = ? AND {_SERVABLE}",
                (now, job_id, owner),
            )
            return cur.rowcount == 1

    async def lease_free_gpu(
        self, *, gpus: list[str], holder: str, pid: int | None, proc_start_time: int | None, now: float
    ) -> str | None:
        """Lease the first of `gpus` that neither a running job nor another holder has; None when all are
        taken. The same transaction discipline as claim_next, so the two never hand out one GPU twice."""
        async with self.transaction() as tx:
            mine = await tx.one("SELECT gpu FROM gpu_leases WHERE holder = ?", (holder,))
            if mine is not None:
                await tx.execute(
                    "UPDATE gpu_leases SET pid = ?, proc_start_time = ?, since = ? WHERE holder = ?",
                    (pid, proc_start_time, now, holder),
                )
                return str(mine["gpu"])
            jobs = await tx.all(f"SELECT gpu_lease FROM jobs WHERE status IN ({_ACTIVE_SQL})")
            others = await tx.all("SELECT gpu FROM gpu_leases")
            taken = {g for r in jobs for g in (r["gpu_lease"] or [])} | {str(r["gpu"]) for r in others}
            free = [g for g in gpus if g not in taken]
            if not free:
                return None
            await tx.execute(
                "INSERT INTO gpu_leases (gpu, holder, pid, proc_start_time, since) VALUES (?, ?, ?, ?, ?)",
                (free[0], holder, pid, proc_start_time, now),
            )
            return free[0]

    async def gpu_leases(self) -> list[dict[str, Any]]:
        return await self.all("SELECT gpu, holder, pid, proc_start_time, since FROM gpu_leases ORDER BY gpu")

    async def release_gpu_lease(self, gpu: str, *, pid: int | None) -> bool:
        """Release a lease, only if it is still the one held by `pid` (a newer holder's stays)."""
        async with self.transaction() as tx:
            cur = await tx.execute("DELETE FROM gpu_leases WHERE gpu = ? AND pid IS ?", (gpu, pid))
            return cur.rowcount == 1

"""The `job_events` table: a job's records (the trainer's and the service's), read by one query."""

from __future__ import annotations

import json
from typing import Any

from .db import Database


class RecordTables(Database):
    """Records are appended by `Tx.append` (db.py), inside the transaction that changes the job."""

    async def records(
        self,
        job_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int,
        exclude_types: tuple[str, ...] = (),
        only_types: tuple[str, ...] = (),
        newest_first: bool = False,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of records, filtered by type, oldest first (seq > after) or newest first (seq < before)."""
        sql = "SELECT seq, type, time, data FROM job_events WHERE job_id = ?"
        params: list[Any] = [job_id]
        if after is not None:
            sql += " AND seq > ?"
            params.append(after)
        if before is not None:
            sql += " AND seq < ?"
            params.append(before)
        if exclude_types:
            sql += f" AND type NOT IN ({', '.join('?' * len(exclude_types))})"
            params += list(exclude_types)
        if only_types:
            sql += f" AND type IN ({', '.join('?' * len(only_types))})"
            params += list(only_types)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        params.append(limit + 1)
        rows = await self.all(sql, params, in_thread=limit > 1000)  # big scans off the event loop
        out = []
        for row in rows[:limit]:
            rec = {"seq": row["seq"], "type": row["type"], "time": row["time"]}
            for k, v in json.loads(row["data"]).items():
                rec.setdefault(k, v)
            out.append(rec)
        return out, len(rows) > limit

    async def metrics_at(self, job_id: str, step: int) -> dict[str, Any]:
        """The last metrics (and eval) values reported at or before `step`."""
        out: dict[str, Any] = {"step": step, "train_loss": None, "train_token_accuracy": None,
                               "learning_rate": None, "epoch": None, "eval_loss": None,
                               "eval_token_accuracy": None}  # fmt: skip
        for type_ in ("metrics", "eval"):
            row = await self.one(
                "SELECT data FROM job_events WHERE job_id = ? AND type = ?"
                " AND CAST(json_extract(data, '$.step') AS INTEGER) <= ? ORDER BY seq DESC LIMIT 1",
                (job_id, type_, step),
            )
            if row is None:
                continue
            data = json.loads(row["data"])
            if type_ == "metrics":
                out.update(
                    train_loss=data.get("loss"),
                    train_token_accuracy=data.get("token_accuracy"),
                    learning_rate=data.get("learning_rate"),
                    epoch=data.get("epoch"),
                )
            elif data.get("step") == step:
                out["eval_loss"] = data.get("eval_loss")
                out["eval_token_accuracy"] = data.get("eval_token_accuracy")
        return out

    async def past_runs(
        self, *, method: str, adapter: str, device: str, num_processes: int, limit: int = 50
    ) -> list[tuple[dict[str, Any], int, float]]:
        """(model shape, tokens seen, seconds) of the newest succeeded jobs that ran from their first step
        with `method` and `adapter` on `device` as `num_processes` processes: what the dry run times a new job
        by."""
        rows = await self.all(
            "SELECT json_extract(s.data, '$.model_setup.shape') AS shape,"
            " json_extract(c.data, '$.tokens_seen') AS tokens,"
            " json_extract(c.data, '$.duration_seconds') AS secs"
            " FROM jobs j JOIN job_events c ON c.job_id = j.id AND c.type = 'completed'"
            " JOIN job_events s ON s.job_id = j.id AND s.type = 'started'"
            " WHERE j.status = 'succeeded' AND json_extract(j.request, '$.method') = ?"
            " AND json_extract(j.request, '$.adapter') = ?"
            " AND json_extract(s.data, '$.device') = ? AND json_extract(s.data, '$.num_processes') = ?"
            " AND json_extract(s.data, '$.start_step') = 0"
            " ORDER BY c.time DESC LIMIT ?",
            (method, adapter, device, num_processes, limit),
        )
        return [
            (json.loads(r["shape"]), int(r["tokens"]), float(r["secs"]))
            for r in rows
            if r["shape"] and r["tokens"] and r["secs"]
        ]

    async def last_seq(self, job_id: str) -> int | None:
        row = await self.one("SELECT last_seq FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else int(row["last_seq"])

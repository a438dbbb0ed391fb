"""The `files` table: uploaded data files, per owner."""

from __future__ import annotations

import json
from typing import Any

from .db import Database
from .jobs import _NON_TERMINAL_SQL


class FileTables(Database):
    async def insert_file(self, row: dict[str, Any]) -> dict[str, Any]:
        cols = ("id", "owner", "filename", "purpose", "bytes", "status", "format", "num_examples", "error",
                "created_at")  # fmt: skip
        async with self.transaction() as tx:
            await tx.execute(
                f"INSERT INTO files ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [json.dumps(row[c]) if c == "error" and row[c] is not None else row[c] for c in cols],
            )
            out = await tx.one("SELECT * FROM files WHERE id = ?", (row["id"],))
        assert out is not None
        return out

    async def get_file(self, file_id: str) -> dict[str, Any] | None:
        return await self.one("SELECT * FROM files WHERE id = ?", (file_id,))

    async def list_files(
        self, *, owner: str, purpose: str | None, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; `after` is a file id of this owner."""
        sql = "SELECT * FROM files WHERE owner = ?"
        params: list[Any] = [owner]
        if purpose is not None:
            sql += " AND purpose = ?"
            params.append(purpose)
        if after is not None:
            sql += " AND ord < COALESCE((SELECT ord FROM files WHERE id = ? AND owner = ?), -1)"
            params += [after, owner]
        sql += " ORDER BY ord DESC LIMIT ?"
        params.append(limit + 1)
        rows = await self.all(sql, params)
        return rows[:limit], len(rows) > limit

    async def delete_file(self, file_id: str, owner: str) -> str | None:
        """Delete the row unless a job that is not finished names the file; returns that job's id if so.
        The check and the delete share one transaction, so a job cannot start using it in between."""
        async with self.transaction() as tx:
            user = await tx.one(
                f"SELECT id FROM jobs WHERE owner = ? AND status IN ({_NON_TERMINAL_SQL})"
                " AND (json_extract(request, '$.training_file') = ?"
                " OR json_extract(request, '$.validation_file') = ?) ORDER BY ord LIMIT 1",
                (owner, file_id, file_id),
            )
            if user is not None:
                return str(user["id"])
            await tx.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner))
        return None

"""The `api_keys` table: key hashes, revocation, each key's webhook settings."""

from __future__ import annotations

from typing import Any

from .db import Database


class KeyTables(Database):
    async def insert_key(self, *, key_id: str, name: str, key_hash: str, now: float) -> bool:
        """Insert a key unless one with this hash exists (then a no-op). Returns True if inserted."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "INSERT OR IGNORE INTO api_keys (id, name, key_hash, created_at) VALUES (?, ?, ?, ?)",
                (key_id, name, key_hash, now),
            )
            return cur.rowcount == 1

    async def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        return await self.one("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))

    async def revoke_keys(self, id_or_name: str, now: float) -> int:
        async with self.transaction() as tx:
            cur = await tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
                (now, id_or_name, id_or_name),
            )
            return cur.rowcount

    async def list_keys(self) -> list[dict[str, Any]]:
        return await self.all("SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at, id")

    async def count_active_keys(self) -> int:
        row = await self.one("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
        return 0 if row is None else int(row["n"])

"""The `api_keys` table: key hashes, revocation, each key's limits (usage.py enforces them) and the
credentials its trainers get (W&B, Hugging Face). Each key's webhook settings: webhooks.py."""

from __future__ import annotations

from typing import Any

from .db import Database
from .usage import LIMITS

# A key's credentials for its trainers: column -> the environment variable the trainer reads it from.
CREDENTIALS = {"wandb_api_key": "WANDB_API_KEY", "hf_token": "HF_TOKEN"}


class KeyTables(Database):
    async def insert_key(
        self, *, key_id: str, name: str, key_hash: str, now: float, limits: dict[str, Any] | None = None
    ) -> bool:
        """Insert a key unless one with this hash exists (then a no-op). Returns True if inserted."""
        limits = {k: v for k, v in (limits or {}).items() if k in LIMITS}
        columns = ", ".join(["id", "name", "key_hash", "created_at", *limits])
        marks = ", ".join("?" for _ in range(4 + len(limits)))
        async with self.transaction() as tx:
            cur = await tx.execute(
                f"INSERT OR IGNORE INTO api_keys ({columns}) VALUES ({marks})",
                (key_id, name, key_hash, now, *limits.values()),
            )
            return cur.rowcount == 1

    async def update_key_limits(self, id_or_name: str, limits: dict[str, Any]) -> str | None:
        """Set (a number) or lift (None) some of a key's limits. Returns the key's id, or None unless exactly
        one active key matches."""
        return await self._set_columns(id_or_name, {k: v for k, v in limits.items() if k in LIMITS})

    async def set_key_credentials(self, id_or_name: str, credentials: dict[str, str | None]) -> str | None:
        """Set (a string) or remove (None) a key's trainer credentials (CREDENTIALS: column -> environment
        variable). Returns the key's id, or None unless exactly one active key matches."""
        return await self._set_columns(id_or_name, {k: v for k, v in credentials.items() if k in CREDENTIALS})

    async def _set_columns(self, id_or_name: str, values: dict[str, Any]) -> str | None:
        """Set columns (named by the callers' allow-lists, never by a client) of the one active key with this
        id or name; its id, or None unless exactly one matches."""
        async with self.transaction() as tx:
            rows = await tx.all(
                "SELECT id FROM api_keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
                (id_or_name, id_or_name),
            )
            if len(rows) != 1:
                return None
            if values:
                sets = ", ".join(f"{k} = ?" for k in values)
                await tx.execute(
                    f"UPDATE api_keys SET {sets} WHERE id = ?", (*values.values(), rows[0]["id"])
                )
            return str(rows[0]["id"])

    async def key_environment(self, key_id: str) -> dict[str, str]:
        """The environment a key's trainers get from its credentials (only what is set)."""
        row = await self.one(f"SELECT {', '.join(CREDENTIALS)} FROM api_keys WHERE id = ?", (key_id,))
        return {env: row[col] for col, env in CREDENTIALS.items() if row and row[col]}

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
        """Every key with its limits and which credentials it has (never their values)."""
        has = ", ".join(f"{col} IS NOT NULL AS has_{col}" for col in CREDENTIALS)
        return await self.all(
            f"SELECT id, name, created_at, revoked_at, {', '.join(LIMITS)}, {has} FROM api_keys"
            " ORDER BY created_at, id"
        )

    async def count_active_keys(self) -> int:
        row = await self.one("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
        return 0 if row is None else int(row["n"])

"""The `webhook_deliveries` table (the outbox) and the webhook columns of `api_keys`.

Deliveries are inserted inside the transaction that appends the job's terminal `status` (or `checkpoint`)
record (`insert_delivery`, called from webhooks/outbox.py through the Tx.append hook). A worker claims a
due one with a conditional UPDATE checked by its rowcount (a lease), posts it outside any transaction, then
records the outcome only if it still holds the lease.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from .db import Database, Tx


async def job_webhook_target(tx: Tx, owner: str) -> str | None:
    """The default webhook URL of a job's key (used when the job has none of its own)."""
    key = await tx.one("SELECT webhook_url FROM api_keys WHERE id = ?", (owner,))
    return None if key is None else key["webhook_url"]


async def insert_delivery(tx: Tx, *, job_id: str, owner: str, event: str, url: str, payload: dict[str, Any],
                          now: float) -> str:  # fmt: skip
    """Put an event in the outbox; the body is `payload` with the delivery's id (also the event's id) first.
    Returns that id."""
    delivery_id = "evt_" + secrets.token_hex(12)
    body = json.dumps({"id": delivery_id, **payload})
    await tx.execute(
        "INSERT INTO webhook_deliveries (id, job_id, owner, event, url, body, status, created_at,"
        " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        (delivery_id, job_id, owner, event, url, body, now, now),
    )
    return delivery_id


class WebhookTables(Database):
    # ---- the outbox ------------------------------------------------------------------------------------

    async def due_deliveries(self, now: float, limit: int) -> list[str]:
        """Ids of pending deliveries due now and not leased by a worker, oldest due first."""
        rows = await self.all(
            "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
            " AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY next_attempt_at LIMIT ?",
            (now, now, limit),
        )
        return [str(r["id"]) for r in rows]

    async def claim_delivery(
        self, delivery_id: str, *, worker: str, now: float, until: float
    ) -> dict[str, Any] | None:
        """Lease a due delivery to `worker` until `until`: the delivery with its key's secret(s) (the
        previous one while a rotation's overlap lasts), or None if another worker has it."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "UPDATE webhook_deliveries SET claimed_by = ?, claimed_until = ? WHERE id = ?"
                " AND status = 'pending' AND next_attempt_at <= ? AND (claimed_until IS NULL OR"
                " claimed_until < ?)",
                (worker, until, delivery_id, now, now),
            )
            if cur.rowcount != 1:
                return None
            return await tx.one(
                "SELECT d.*, k.webhook_secret AS secret, CASE WHEN k.webhook_secret_previous_until > ?"
                " THEN k.webhook_secret_previous END AS previous_secret FROM webhook_deliveries d"
                " LEFT JOIN api_keys k ON k.id = d.owner WHERE d.id = ?",
                (now, delivery_id),
            )

    async def record_delivery(
        self,
        delivery: dict[str, Any],
        *,
        worker: str,
        status: str,
        attempts: int,
        next_attempt_at: float,
        status_code: int | None,
        error: str | None,
        now: float,
        record: dict[str, Any],
    ) -> bool:
        """Record an attempt's outcome if `worker` still holds the lease, and append `record` (a `webhook`
        record) to the job if it still exists. False if the lease ran out (another worker took it over)."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "UPDATE webhook_deliveries SET attempts = ?, status = ?, next_attempt_at = ?,"
                " claimed_by = NULL, claimed_until = NULL, last_status_code = ?, last_error = ?,"
                " finished_at = ? WHERE id = ? AND claimed_by = ?",
                (
                    attempts,
                    status,
                    next_attempt_at,
                    status_code,
                    error,
                    None if status == "pending" else now,
                    delivery["id"],
                    worker,
                ),
            )
            if cur.rowcount != 1:
                return False
            if await tx.one("SELECT 1 AS x FROM jobs WHERE id = ?", (delivery["job_id"],)) is not None:
                await tx.append(delivery["job_id"], [("webhook", now, record)])
        return True

    async def prune_deliveries(self, before: float) -> int:
        """Remove deliveries that finished before `before`; returns how many."""
        async with self.transaction() as tx:
            cur = await tx.execute(
                "DELETE FROM webhook_deliveries WHERE status IN ('delivered', 'failed') AND finished_at < ?",
                (before,),
            )
            return int(cur.rowcount)

    # ---- each key's webhook settings -------------------------------------------------------------------

    async def set_key_webhook(
        self,
        id_or_name: str,
        *,
        url: str | None,
        clear: bool,
        rotate: bool,
        make_secret: Callable[[], str],
        overlap_seconds: float,
    ) -> tuple[str, str | None] | None:
        """Set (or clear) an active key's default webhook URL; give it a signing secret (`make_secret()`) if
        it has none, or a new one if `rotate` (the old one keeps signing for `overlap_seconds`). Returns
        (key id, the new secret or None when unchanged), or None if no single active key matches."""
        async with self.transaction() as tx:
            rows = await tx.all(
                "SELECT id, webhook_secret FROM api_keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
                (id_or_name, id_or_name),
            )
            if len(rows) != 1:
                return None
            key = rows[0]
            secret = make_secret() if rotate or not key["webhook_secret"] else None
            if secret is not None:
                await tx.execute(
                    "UPDATE api_keys SET webhook_secret = ?, webhook_secret_previous = ?,"
                    " webhook_secret_previous_until = ? WHERE id = ?",
                    (
                        secret,
                        key["webhook_secret"],
                        time.time() + overlap_seconds if key["webhook_secret"] else None,
                        key["id"],
                    ),
                )
            if url is not None or clear:
                await tx.execute("UPDATE api_keys SET webhook_url = ? WHERE id = ?", (url, key["id"]))
            return str(key["id"]), secret

    async def key_webhooks(self) -> dict[str, dict[str, Any]]:
        """key id -> {"webhook_url", "has_webhook_secret"} (for `keys list`; the secrets themselves never)."""
        rows = await self.all(
            "SELECT id, webhook_url, webhook_secret IS NOT NULL AS has_secret FROM api_keys ORDER BY id"
        )
        return {
            r["id"]: {"webhook_url": r["webhook_url"], "has_webhook_secret": bool(r["has_secret"])}
            for r in rows
        }

    async def key_has_webhook_secret(self, key_id: str) -> bool:
        row = await self.one("SELECT webhook_secret FROM api_keys WHERE id = ?", (key_id,))
        return bool(row and row["webhook_secret"])

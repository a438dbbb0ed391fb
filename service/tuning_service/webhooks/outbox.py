"""The outbox's producer: the `Tx.append` hook (storage/db.py) that turns a job's terminal `status` record
(and, if asked, a `checkpoint` record) into a webhook delivery, in the same transaction as the record
itself: an event is never lost and never recorded twice, whichever worker or restart follows. The same hook
counts a finished job's duration for /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..observability import metrics
from ..schema.jobs import TERMINAL_EVENTS
from ..storage.db import AppendHook, Tx
from ..storage.webhooks import insert_delivery, job_webhook_target


def make_append_hook(
    public_job: Callable[[dict[str, Any]], dict[str, Any]], on_enqueue: Callable[[], None] = lambda: None
) -> AppendHook:
    async def hook(tx: Tx, job_id: str, records: list[tuple[str, float, dict[str, Any]]]) -> None:
        events: list[tuple[str, float, dict[str, Any] | None]] = []
        for type_, time_, data in records:
            if type_ == "status" and f"job.{data.get('status')}" in TERMINAL_EVENTS:
                events.append((f"job.{data['status']}", time_, None))
            elif type_ == "checkpoint":
                # As GET tunings.checkpoints shows it: relative to the job's folder, not a server path.
                name = str(data.get("path") or "").rstrip("/").rsplit("/", 1)[-1]
                ckpt = {"step": data.get("step"), "path": f"checkpoints/{name}" if name else None}
                events.append(("job.checkpoint", time_, ckpt))
        if not events:
            return
        row = await tx.job(job_id)
        if row is None:
            return
        if any(e[0] in TERMINAL_EVENTS for e in events):
            await metrics.record_job_duration(tx, row)
        target = await _target(tx, row)
        if target is None:
            return
        url, wanted = target
        for event, time_, checkpoint in events:
            if event in wanted:
                payload: dict[str, Any] = {
                    "object": "event",
                    "type": event,
                    "created_at": int(time_),
                    "data": public_job(row),
                }
                if checkpoint is not None:
                    payload["checkpoint"] = checkpoint
                await insert_delivery(
                    tx, job_id=row["id"], owner=row["owner"], event=event, url=url, payload=payload, now=time_
                )
                on_enqueue()

    return hook


async def _target(tx: Tx, row: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """Where a job's events go: its own webhook_url (and events), else its key's default (terminal ones)."""
    req = row.get("request") or {}
    if req.get("webhook_url"):
        return req["webhook_url"], tuple(req.get("webhook_events") or TERMINAL_EVENTS)
    url = await job_webhook_target(tx, row["owner"])
    return (url, TERMINAL_EVENTS) if url else None

"""Server-Sent Events for a job's log records (`GET /v1/tunings.logs/{id}?follow=true`).

Each record is one event: `id: <seq>`, `event: <type>`, `data: <the record as JSON>`. A reconnecting client
sends `Last-Event-ID` and gets what it missed, nothing twice. Silence longer than the heartbeat interval
sends a `: heartbeat` comment (keeps proxies from closing the connection and lets the server notice a
vanished client).
The stream ends after the `status` record that makes the job terminal, or at once if the job is already
terminal and the client has everything.

Disconnects: Starlette's StreamingResponse cancels this generator when the client goes away, which cancels the
pending wait; nothing else is started here, so nothing can leak.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ..engine.records import JobRecords
from ..errors import APIError
from ..states import TERMINAL_VALUES

log = logging.getLogger("tuning_service.sse")

PAGE = 500
# Tell EventSource clients how long to wait before reconnecting (ms).
RETRY_MS = 2000


def format_event(record: dict[str, Any]) -> bytes:
    # json.dumps never emits a raw newline, so the record is always exactly one `data:` line.
    data = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    return f"id: {record['seq']}\nevent: {record.get('type', 'message')}\ndata: {data}\n\n".encode()


def is_terminal_record(record: dict[str, Any]) -> bool:
    return record.get("type") == "status" and record.get("status") in TERMINAL_VALUES


async def event_stream(records: JobRecords, *, after: int, heartbeat_seconds: float) -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_MS}\n\n".encode()
    last_sent = time.monotonic()
    terminal_seen = False
    while True:
        try:
            page, has_more = await records.page(after=after, limit=PAGE)
        except APIError as exc:
            if exc.status_code == 404:  # deleted while we streamed
                return
            raise
        for record in page:
            yield format_event(record)
            after = int(record["seq"])
            last_sent = time.monotonic()
            if is_terminal_record(record):
                return
        if has_more:
            continue
        if not page:
            if terminal_seen:
                # Terminal and nothing after `after`: the client resumed past the end (the terminal record
                # went out on an earlier connection).
                return
            if await records.is_terminal():
                # Read once more: the terminal record may have landed between the two queries.
                terminal_seen = True
                continue
        remaining = heartbeat_seconds - (time.monotonic() - last_sent)
        if remaining <= 0:
            yield b": heartbeat\n\n"
            last_sent = time.monotonic()
            remaining = heartbeat_seconds
        await records.wait(after, remaining)

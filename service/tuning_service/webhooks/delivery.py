"""Webhook delivery: the loop of one worker that claims due events from the outbox (outbox.py), POSTs them
signed, and records each attempt (docs/api.md "Webhooks"; the outbox and its claims: service-internals.md).

A claim is a lease (`claimed_until`): a worker that dies mid-attempt leaves the event to the next one, so
delivery is at least once. The POST runs in a thread (urllib3, already the SDK's one dependency) and goes to
the address that was checked against the URL policy, never to a second DNS answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3

from ..settings import Settings
from ..storage.webhooks import WebhookTables
from .policy import SIGNATURE_HEADER, UrlPolicy, sign

log = logging.getLogger("tuning_service.webhooks")

POLL_SECONDS = 0.5  # how often a worker looks for deliveries due (its own events wake it at once)
BATCH = 8  # deliveries attempted at once per worker
# Finished deliveries (delivered or failed) stay in the outbox this long, then go: each attempt is also a job
# record, which lives as long as the job.
KEEP_FINISHED_SECONDS = 7 * 86400
PRUNE_EVERY_SECONDS = 3600


@dataclass
class Attempt:
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(policy: UrlPolicy, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Attempt:
    """One attempt (blocking: run in a thread). Connects to the checked address itself, never to a second
    DNS answer; redirects are not followed."""
    try:
        host, port, addresses = policy.resolve(url)
    except ValueError as exc:
        return Attempt(error=f"refused: {exc}", permanent=True)
    except OSError as exc:
        return Attempt(error=f"cannot resolve the host: {exc}")
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    default_port = 443 if parts.scheme == "https" else 80
    name = f"[{host}]" if ":" in host else host  # an IPv6 literal
    headers = {**headers, "Host": name if port == default_port else f"{name}:{port}"}
    last_error = "no address"
    # At most two addresses (e.g. IPv6, then IPv4): the claim's lease covers two timeouts.
    for ip in addresses[:2]:
        pool: urllib3.HTTPConnectionPool
        kw: dict[str, Any] = {
            "timeout": urllib3.Timeout(total=timeout),  # connect + request + response, all told
            "retries": False,
            "maxsize": 1,
        }
        if parts.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(
                str(ip), port, server_hostname=host, assert_hostname=host, cert_reqs="CERT_REQUIRED", **kw
            )
        else:
            pool = urllib3.HTTPConnectionPool(str(ip), port, **kw)
        try:
            resp = pool.urlopen(
                "POST", target, body=body, headers=headers, redirect=False, preload_content=False
            )
            try:
                resp.read(65536)  # the receiver's answer is not used; bounded
            finally:
                resp.release_conn()
            code = resp.status
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            permanent = 400 <= code < 500 and code not in (408, 429)
            error = None if 200 <= code < 300 else f"HTTP {code}"
            return Attempt(code, error, retry_after, permanent)
        except urllib3.exceptions.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            pool.close()
    return Attempt(error=last_error)


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def backoff(settings: Settings, attempts: int, retry_after: float | None = None) -> float:
    """Delay before attempt `attempts + 1`: exponential, 50-100 % of it (jitter spreads a burst of retries),
    at least the receiver's Retry-After, at most TUNING_WEBHOOK_BACKOFF_MAX."""
    base = min(settings.webhook_backoff_max_seconds, settings.webhook_backoff_seconds * 2 ** (attempts - 1))
    delay = base / 2 + random.uniform(0, base / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.webhook_backoff_max_seconds)


class Deliverer:
    """The delivery loop of one worker."""

    def __init__(self, settings: Settings, store: WebhookTables, worker_id: str) -> None:
        self.settings = settings
        self.store = store
        self.worker_id = worker_id
        self.policy = UrlPolicy(settings.webhook_allow_networks)
        self._wake = asyncio.Event()
        self._pending = False
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tuning-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    def enqueued(self) -> None:
        """An event of this worker went into the outbox (its transaction has not committed yet)."""
        self._pending = True

    def committed(self) -> None:
        """Called after this worker's changes commit (JobManager._notify): send what was just enqueued."""
        if self._pending:
            self._pending = False
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery tick failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_SECONDS)
            self._wake.clear()

    async def tick(self) -> int:
        """Attempt every delivery due now (BATCH at a time); returns how many were attempted."""
        if time.time() - self._last_prune >= PRUNE_EVERY_SECONDS:
            await self.prune(time.time() - KEEP_FINISHED_SECONDS)
        done = 0
        while True:
            now = time.time()
            due = await self.store.due_deliveries(now, BATCH)
            claimed = [d for d in [await self._claim(i, now) for i in due] if d is not None]
            if not claimed:
                return done
            await asyncio.gather(*(self._attempt(d) for d in claimed))
            done += len(claimed)

    async def prune(self, before: float) -> int:
        """Remove deliveries that finished before `before`; returns how many."""
        self._last_prune = time.time()
        return await self.store.prune_deliveries(before)

    async def _claim(self, delivery_id: str, now: float) -> dict[str, Any] | None:
        lease = now + self.settings.webhook_timeout_seconds * 2 + 5
        return await self.store.claim_delivery(delivery_id, worker=self.worker_id, now=now, until=lease)

    async def _attempt(self, d: dict[str, Any]) -> None:
        attempt_no = int(d["attempts"]) + 1
        started = time.monotonic()
        if not d["secret"]:
            result = Attempt(error="the job's API key has no webhook signing secret", permanent=True)
        else:
            body = d["body"].encode("utf-8")
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "tuning-service-webhooks/1",
                SIGNATURE_HEADER: sign(
                    [d["secret"], *([d["previous_secret"]] if d["previous_secret"] else [])],
                    int(time.time()),
                    body,
                ),
                "Tuning-Event": d["event"],
                "Tuning-Delivery": d["id"],
                "Tuning-Attempt": str(attempt_no),
            }
            result = await asyncio.to_thread(
                post, self.policy, d["url"], body, headers, self.settings.webhook_timeout_seconds
            )
        await self._record(d, attempt_no, result, time.monotonic() - started)

    async def _record(self, d: dict[str, Any], attempt_no: int, result: Attempt, seconds: float) -> None:
        now = time.time()
        next_at: float | None = None
        if result.delivered:
            status, outcome = "delivered", "delivered"
        elif result.permanent:
            status, outcome = "failed", "failed"
        else:
            next_at = now + backoff(self.settings, attempt_no, result.retry_after)
            if next_at > d["created_at"] + self.settings.webhook_retry_seconds:
                status, outcome, next_at = "failed", "gave_up", None
            else:
                status, outcome = "pending", "retrying"
        record = {
            "delivery_id": d["id"],
            "event": d["event"],
            "url": d["url"],
            "attempt": attempt_no,
            "outcome": outcome,
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": round(seconds * 1000, 1),
            "next_attempt_at": None if next_at is None else round(next_at, 3),
        }
        recorded = await self.store.record_delivery(
            d,
            worker=self.worker_id,
            status=status,
            attempts=attempt_no,
            next_attempt_at=next_at if next_at is not None else now,
            status_code=result.status_code,
            error=result.error,
            now=now,
            record=record,
        )
        if not recorded:
            return  # our lease ran out and another worker took the delivery over
        level = logging.INFO if outcome in ("delivered", "retrying") else logging.WARNING
        log.log(
            level, "webhook %s (%s, job %s) attempt %d: %s%s", d["id"], d["event"], d["job_id"], attempt_no,
            outcome, f" ({result.error})" if result.error else "",
        )  # fmt: skip

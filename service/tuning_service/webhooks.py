"""Webhooks: tell a job's owner when it ends (and, if asked, at each checkpoint) with a signed POST.

- Target: the job's own `webhook_url` (create field, with optional `webhook_events`), else its API key's
  default (`python -m tuning_service keys set-webhook`). Each key has a signing secret (`whsec_...`), shown
  once when it is made; it is stored as is, because every delivery is signed with it.
- Outbox: the event is written to `webhook_deliveries` by `append_hook`, inside the very transaction that
  appends the terminal `status` record (or the trainer's `checkpoint` record), so an event is never lost
  and never recorded twice, whichever worker or restart follows. `Deliverer` (one per worker, started with
  the manager) claims due deliveries with a conditional UPDATE checked by rowcount (a lease: a worker that
  dies mid-attempt is retried after it), POSTs them, and records every attempt as a job record of type
  `webhook` (GET /v1/tunings.events).
- Signature: `Tuning-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, fresh `t` per
  attempt (tuning_sdk.webhooks.verify_signature checks it). 2xx = delivered; 4xx other than 408/429 =
  refused for good; anything else (5xx, 408, 429, 3xx, timeouts, connection errors) is retried with
  exponential backoff and jitter until TUNING_WEBHOOK_RETRY_SECONDS after the event.
- Only http(s) URLs to public addresses: private, loopback, link-local, CGNAT, multicast... addresses are
  refused (unless inside TUNING_WEBHOOK_ALLOW_NETWORKS): at create for a literal address or a name that
  resolves to one (422, param `webhook_url`), and again at every attempt, where the connection goes to the
  very address that was checked (no second DNS answer can swap in a private one: DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3

from . import metrics
from .errors import APIError
from .settings import Settings

log = logging.getLogger("tuning_service.webhooks")

TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
EVENTS = (*TERMINAL_EVENTS, "job.checkpoint")
MAX_URL_CHARS = 2048
SIGNATURE_HEADER = "Tuning-Signature"
POLL_SECONDS = 0.5  # how often a worker looks for deliveries due (its own events wake it at once)
BATCH = 8  # deliveries attempted at once per worker
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


# ---- which addresses a webhook may reach ----------------------------------------------------------------


class UrlPolicy:
    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self.allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in allow_networks:
            try:
                self.allowed.append(ipaddress.ip_network(raw, strict=False))
            except ValueError:
                raise ValueError(
                    f"TUNING_WEBHOOK_ALLOW_NETWORKS: {raw!r} is not a network (e.g. 127.0.0.0/8)"
                ) from None

    def address_allowed(self, ip: _IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(ip in net for net in self.allowed):
            return True
        return ip.is_global and not ip.is_multicast

    def check_shape(self, url: Any, param: str = "webhook_url") -> str:
        """The URL's form and, for a literal address or `localhost`, its address (no DNS)."""
        if not isinstance(url, str):
            raise APIError(400, "invalid_request", f"{param} must be a string", param=param)
        parts = urlsplit(url)
        if len(url) > MAX_URL_CHARS or not url.isprintable() or " " in url:
            raise _invalid(param, f"{param} must be a URL of at most {MAX_URL_CHARS} printable characters")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid(param, f"{param} must be an http:// or https:// URL with a host, got {url[:80]!r}")
        if parts.username is not None or parts.password is not None:
            raise _invalid(param, f"{param} must not carry credentials (user:password@)")
        try:
            _ = parts.port
        except ValueError:
            raise _invalid(param, f"{param} has an invalid port") from None
        host = parts.hostname
        if host == "localhost" or host.endswith(".localhost"):
            ip: _IPAddress | None = ipaddress.ip_address("127.0.0.1")
        else:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                ip = None
        if ip is not None and not self.address_allowed(ip):
            raise _private(param, host, ip)
        return url

    def resolve(self, url: str) -> tuple[str, int, list[_IPAddress]]:
        """host, port and every address the host resolves to; ValueError if any of them is not allowed."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[_IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
        refused = [str(ip) for ip in addresses if not self.address_allowed(ip)]
        if refused:
            raise ValueError(f"{host} resolves to non-public address(es) {', '.join(refused)}")
        return host, port, addresses

    async def check(self, url: Any, param: str = "webhook_url") -> str:
        """At create: the shape, and every address the host resolves to now. A name that does not resolve
        is accepted (DNS may be down for a moment; the delivery checks again and retries)."""
        url = self.check_shape(url, param)
        try:
            await asyncio.to_thread(self.resolve, url)
        except ValueError as exc:
            raise _invalid(param, f"{param} is refused: {exc} (see TUNING_WEBHOOK_ALLOW_NETWORKS)") from None
        except OSError:
            pass
        return url


def _invalid(param: str, message: str) -> APIError:
    return APIError(422, "invalid_value", message, param=param)


def _private(param: str, host: str, ip: _IPAddress) -> APIError:
    return _invalid(
        param,
        f"{param} is refused: {host} is a private, loopback, link-local or otherwise non-public address "
        f"({ip}); webhooks only reach public addresses unless TUNING_WEBHOOK_ALLOW_NETWORKS allows it",
    )


def check_events(value: Any, param: str = "webhook_events") -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise APIError(400, "invalid_request", f"{param} must be a list of event names", param=param)
    unknown = [v for v in value if v not in EVENTS]
    if unknown or not value:
        raise _invalid(param, f"{param} must name one or more of {', '.join(EVENTS)}, got {value!r}")
    return [e for e in EVENTS if e in value]  # canonical order, no duplicates


# ---- the outbox ----------------------------------------------------------------------------------------


def make_append_hook(
    public_job: Callable[[dict[str, Any]], dict[str, Any]], on_enqueue: Callable[[], None] = lambda: None
) -> Any:
    """The Tx.append hook (db.py): a terminal `status` record counts the job's duration (metrics.py) and,
    like a `checkpoint` record, puts a webhook delivery in the outbox, in the same transaction."""

    async def hook(tx: Any, job_id: str, records: list[tuple[str, float, dict[str, Any]]]) -> None:
        events: list[tuple[str, float, dict[str, Any] | None]] = []
        for type_, time_, data in records:
            if type_ == "status" and f"job.{data.get('status')}" in TERMINAL_EVENTS:
                events.append((f"job.{data['status']}", time_, None))
            elif type_ == "checkpoint":
                events.append(("job.checkpoint", time_, {"step": data.get("step"), "path": data.get("path")}))
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
                await _enqueue(tx, row, url, event, time_, checkpoint, public_job)
                on_enqueue()

    return hook


async def _target(tx: Any, row: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    req = row.get("request") or {}
    if req.get("webhook_url"):
        return req["webhook_url"], tuple(req.get("webhook_events") or TERMINAL_EVENTS)
    key = await tx.one("SELECT webhook_url FROM api_keys WHERE id = ?", (row["owner"],))
    if key is not None and key["webhook_url"]:
        return key["webhook_url"], TERMINAL_EVENTS
    return None


async def _enqueue(
    tx: Any,
    row: dict[str, Any],
    url: str,
    event: str,
    now: float,
    checkpoint: dict[str, Any] | None,
    public_job: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    delivery_id = "evt_" + secrets.token_hex(12)
    payload: dict[str, Any] = {
        "id": delivery_id,
        "object": "event",
        "type": event,
        "created_at": int(now),
        "data": public_job(row),
    }
    if checkpoint is not None:
        payload["checkpoint"] = checkpoint
    await tx.execute(
        "INSERT INTO webhook_deliveries (id, job_id, owner, event, url, body, status, created_at,"
        " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        (delivery_id, row["id"], row["owner"], event, url, json.dumps(payload), now, now),
    )


# ---- API key webhook settings ---------------------------------------------------------------------------


async def set_key_webhook(
    store: Any, id_or_name: str, *, url: str | None, clear: bool, rotate: bool
) -> tuple[str, str | None] | None:
    """Set (or clear) a key's default webhook URL; make a signing secret if it has none (or `rotate`).
    Returns (key id, the new secret or None when unchanged), or None if no active key matches."""
    async with store.transaction() as tx:
        rows = await tx.all(
            "SELECT id, webhook_secret FROM api_keys WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
            (id_or_name, id_or_name),
        )
        if len(rows) != 1:
            return None
        key = rows[0]
        secret = new_secret() if rotate or not key["webhook_secret"] else None
        if secret is not None:
            await tx.execute("UPDATE api_keys SET webhook_secret = ? WHERE id = ?", (secret, key["id"]))
        if url is not None or clear:
            await tx.execute("UPDATE api_keys SET webhook_url = ? WHERE id = ?", (url, key["id"]))
        return str(key["id"]), secret


async def key_has_secret(store: Any, key_id: str) -> bool:
    row = await store.one("SELECT webhook_secret FROM api_keys WHERE id = ?", (key_id,))
    return bool(row and row["webhook_secret"])


# ---- delivery -------------------------------------------------------------------------------------------


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
    headers = {**headers, "Host": host if port == default_port else f"{host}:{port}"}
    last_error = "no address"
    for ip in addresses:
        pool: urllib3.HTTPConnectionPool
        kw: dict[str, Any] = {
            "timeout": urllib3.Timeout(connect=timeout, read=timeout),
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

    def __init__(self, settings: Settings, store: Any, worker_id: str) -> None:
        self.settings = settings
        self.store = store
        self.worker_id = worker_id
        self.policy = UrlPolicy(settings.webhook_allow_networks)
        self._wake = asyncio.Event()
        self._pending = False
        self._task: asyncio.Task[None] | None = None

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
        done = 0
        while True:
            now = time.time()
            due = await self.store.all(
                "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
                " AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY next_attempt_at LIMIT ?",
                (now, now, BATCH),
            )
            claimed = [d for d in [await self._claim(r["id"], now) for r in due] if d is not None]
            if not claimed:
                return done
            await asyncio.gather(*(self._attempt(d) for d in claimed))
            done += len(claimed)

    async def _claim(self, delivery_id: str, now: float) -> dict[str, Any] | None:
        lease = now + self.settings.webhook_timeout_seconds * 2 + 5
        async with self.store.transaction() as tx:
            cur = await tx.execute(
                "UPDATE webhook_deliveries SET claimed_by = ?, claimed_until = ? WHERE id = ?"
                " AND status = 'pending' AND next_attempt_at <= ? AND (claimed_until IS NULL OR"
                " claimed_until < ?)",
                (self.worker_id, lease, delivery_id, now, now),
            )
            if cur.rowcount != 1:
                return None  # another worker has it
            row = await tx.one(
                "SELECT d.*, k.webhook_secret AS secret FROM webhook_deliveries d"
                " LEFT JOIN api_keys k ON k.id = d.owner WHERE d.id = ?",
                (delivery_id,),
            )
        return row

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
                SIGNATURE_HEADER: sign(d["secret"], int(time.time()), body),
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
        async with self.store.transaction() as tx:
            cur = await tx.execute(
                "UPDATE webhook_deliveries SET attempts = ?, status = ?, next_attempt_at = ?,"
                " claimed_by = NULL, claimed_until = NULL, last_status_code = ?, last_error = ?,"
                " finished_at = ? WHERE id = ? AND claimed_by = ?",
                (
                    attempt_no,
                    status,
                    next_at if next_at is not None else now,
                    result.status_code,
                    result.error,
                    None if status == "pending" else now,
                    d["id"],
                    self.worker_id,
                ),
            )
            if cur.rowcount != 1:
                return  # our lease ran out and another worker took the delivery over
            if await tx.one("SELECT 1 AS x FROM jobs WHERE id = ?", (d["job_id"],)) is not None:
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
                await tx.append(d["job_id"], [("webhook", now, record)])
        level = logging.INFO if outcome in ("delivered", "retrying") else logging.WARNING
        log.log(
            level, "webhook %s (%s, job %s) attempt %d: %s%s", d["id"], d["event"], d["job_id"], attempt_no,
            outcome, f" ({result.error})" if result.error else "",
        )  # fmt: skip

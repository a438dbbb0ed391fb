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
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from ..errors import APIError
from ..observability import metrics

log = logging.getLogger("tuning_service.webhooks")

TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
EVENTS = (*TERMINAL_EVENTS, "job.checkpoint")
MAX_URL_CHARS = 2048
SIGNATURE_HEADER = "Tuning-Signature"
RESOLVE_AT_CREATE_SECONDS = 2.0
ROTATION_OVERLAP_SECONDS = 86400.0  # after `keys set-webhook --rotate-secret`, the old secret also signs
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secrets_: Iterable[str], timestamp: int, body: bytes) -> str:
    """`t=<timestamp>,v1=<hex>[,v1=<hex>]`: one v1 per secret (two during a rotation's overlap)."""
    parts = [f"t={timestamp}"]
    for secret in secrets_:
        mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
        parts.append(f"v1={mac.hexdigest()}")
    return ",".join(parts)


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
            # Bounded: a slow resolver must not hold the create request (the delivery checks again anyway).
            await asyncio.wait_for(asyncio.to_thread(self.resolve, url), RESOLVE_AT_CREATE_SECONDS)
        except ValueError as exc:
            raise _invalid(param, f"{param} is refused: {exc} (see TUNING_WEBHOOK_ALLOW_NETWORKS)") from None
        except (OSError, asyncio.TimeoutError):
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
            # The old secret keeps signing (a second v1) for ROTATION_OVERLAP_SECONDS: receivers switch over
            # without missing a delivery.
            await tx.execute(
                "UPDATE api_keys SET webhook_secret = ?, webhook_secret_previous = ?,"
                " webhook_secret_previous_until = ? WHERE id = ?",
                (
                    secret,
                    key["webhook_secret"],
                    time.time() + ROTATION_OVERLAP_SECONDS if key["webhook_secret"] else None,
                    key["id"],
                ),
            )
        if url is not None or clear:
            await tx.execute("UPDATE api_keys SET webhook_url = ? WHERE id = ?", (url, key["id"]))
        return str(key["id"]), secret


async def key_webhooks(store: Any) -> dict[str, dict[str, Any]]:
    """key id -> {"webhook_url", "has_webhook_secret"} (for `keys list`; the secrets themselves never)."""
    rows = await store.all(
        "SELECT id, webhook_url, webhook_secret IS NOT NULL AS has_secret FROM api_keys ORDER BY id"
    )
    return {
        r["id"]: {"webhook_url": r["webhook_url"], "has_webhook_secret": bool(r["has_secret"])} for r in rows
    }


async def key_has_secret(store: Any, key_id: str) -> bool:
    row = await store.one("SELECT webhook_secret FROM api_keys WHERE id = ?", (key_id,))
    return bool(row and row["webhook_secret"])

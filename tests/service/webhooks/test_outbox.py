"""The webhook outbox at the store level: an event enqueued by one service process is delivered by the next
(restart), a delivery leased by another worker is left alone until its lease ends, addresses are checked
again at delivery time, retries stop after TUNING_WEBHOOK_RETRY_SECONDS, and the backoff grows with jitter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import make_settings, request, run
from tests.service.webhook_receiver import Receiver
from tuning_sdk.webhooks import verify_signature
from tuning_service.engine.facade import JobManager
from tuning_service.engine.jobview import public_job
from tuning_service.schema.jobs import TERMINAL_EVENTS, WEBHOOK_EVENTS, WebhookEvent
from tuning_service.states import JobStatus
from tuning_service.storage.store import Store
from tuning_service.webhooks import policy as webhooks
from tuning_service.webhooks.delivery import Attempt, Deliverer, backoff
from tuning_service.webhooks.outbox import make_append_hook


async def open_store(settings: Any) -> Store:
    settings.ensure_dirs()
    store = Store(settings.db_path)
    await store.open()
    store.on_append = make_append_hook(public_job)
    return store


async def cancelled_job_with_webhook(store: Store, settings: Any, url: str) -> tuple[str, str, str]:
    """A key with a secret, and a job of it cancelled while queued: one delivery in the outbox."""
    m = JobManager(settings, store)  # not started: only its key helpers
    owner, _ = await m.create_key("hooks")
    _, secret = await m.set_key_webhook(owner, url=None, clear=False, rotate=False) or ("", "")
    assert secret
    job, _ = await m.create(owner=owner, request=request(webhook_url=url), idempotency_key=None)
    async with store.transaction() as tx:
        row = await tx.job(job["id"])
        assert row is not None
        await tx.transition(row, JobStatus.CANCELLED, now=time.time(), message="cancelled before it started")
    return owner, job["id"], secret


def deliveries(store: Store) -> list[dict[str, Any]]:
    return [dict(r) for r in store.reader.execute("SELECT * FROM webhook_deliveries").fetchall()]


def test_pending_delivery_survives_a_restart(tmp_path: Path) -> None:
    receiver = Receiver().start()
    settings = make_settings(tmp_path, webhook_allow_networks=["127.0.0.0/8"], webhook_backoff_seconds=0.1)

    async def body() -> None:
        store = await open_store(settings)
        _, job_id, secret = await cancelled_job_with_webhook(store, settings, receiver.url)
        [pending] = deliveries(store)
        assert pending["status"] == "pending" and pending["attempts"] == 0
        assert pending["event"] == "job.cancelled" and pending["job_id"] == job_id
        await store.close()  # the service stops before it could deliver

        store = await open_store(settings)  # the next start
        try:
            sent = await Deliverer(settings, store, "worker-b").tick()
            assert sent == 1
            [done] = deliveries(store)
            assert done["status"] == "delivered" and done["attempts"] == 1 and done["claimed_by"] is None
            [got] = receiver.received
            event = verify_signature(got.body, got.headers["tuning-signature"], secret)
            assert event["type"] == "job.cancelled" and event["data"]["status"] == "cancelled"
            records, _ = await store.records(job_id, limit=100, only_types=("webhook",))
            assert [r["outcome"] for r in records] == ["delivered"]
            assert await Deliverer(settings, store, "worker-b").tick() == 0  # nothing twice
            # Finished deliveries are pruned after a while (the job keeps its `webhook` records).
            assert await Deliverer(settings, store, "w").prune(time.time() - 3600) == 0
            assert await Deliverer(settings, store, "w").prune(time.time() + 1) == 1
            assert deliveries(store) == []
            records, _ = await store.records(job_id, limit=100, only_types=("webhook",))
            assert len(records) == 1
        finally:
            await store.close()

    try:
        run(body())
    finally:
        receiver.stop()


def test_a_leased_delivery_is_left_to_its_worker_until_the_lease_ends(tmp_path: Path) -> None:
    receiver = Receiver().start()
    settings = make_settings(tmp_path, webhook_allow_networks=["127.0.0.0/8"])

    async def body() -> None:
        store = await open_store(settings)
        try:
            await cancelled_job_with_webhook(store, settings, receiver.url)
            a = Deliverer(settings, store, "worker-a")
            [row] = deliveries(store)
            claimed = await a._claim(row["id"], time.time())
            assert claimed is not None and claimed["claimed_by"] == "worker-a"
            assert await a._claim(row["id"], time.time()) is None  # the rowcount says: taken
            b = Deliverer(settings, store, "worker-b")
            assert await b.tick() == 0 and receiver.received == []
            # Worker A died mid-attempt: once its lease has run out, B takes the delivery over.
            async with store.transaction() as tx:
                await tx.execute("UPDATE webhook_deliveries SET claimed_until = ?", (time.time() - 1,))
            assert await b.tick() == 1
            assert len(receiver.received) == 1
            # A's late result is discarded: the delivery is no longer claimed by it.
            await a._record(claimed, 1, Attempt(status_code=500, error="HTTP 500"), 0.1)
            [row] = deliveries(store)
            assert row["status"] == "delivered" and row["attempts"] == 1
        finally:
            await store.close()

    try:
        run(body())
    finally:
        receiver.stop()


def test_addresses_are_checked_again_at_delivery_time(tmp_path: Path) -> None:
    receiver = Receiver().start()
    allowed = make_settings(tmp_path, webhook_allow_networks=["127.0.0.0/8"])
    # The next start no longer allows loopback (as a DNS answer that changed to a private address would be).
    strict = make_settings(tmp_path, webhook_allow_networks=[])

    async def body() -> None:
        store = await open_store(allowed)
        try:
            _, job_id, _ = await cancelled_job_with_webhook(store, allowed, receiver.url)
            assert await Deliverer(strict, store, "w").tick() == 1
            [row] = deliveries(store)
            assert row["status"] == "failed" and "non-public" in row["last_error"]
            records, _ = await store.records(job_id, limit=100, only_types=("webhook",))
            assert records[0]["outcome"] == "failed" and "refused" in records[0]["error"]
            assert receiver.received == []
        finally:
            await store.close()

    try:
        run(body())
    finally:
        receiver.stop()


def test_retries_stop_after_the_retry_window(tmp_path: Path) -> None:
    receiver = Receiver(statuses=[503] * 50).start()
    settings = make_settings(
        tmp_path,
        webhook_allow_networks=["127.0.0.0/8"],
        webhook_backoff_seconds=0.05,
        webhook_retry_seconds=0.5,
    )

    async def body() -> None:
        store = await open_store(settings)
        try:
            _, job_id, _ = await cancelled_job_with_webhook(store, settings, receiver.url)
            d = Deliverer(settings, store, "w")
            deadline = time.monotonic() + 10
            while deliveries(store)[0]["status"] == "pending":
                assert time.monotonic() < deadline
                await d.tick()
                time.sleep(0.05)
            [row] = deliveries(store)
            assert row["status"] == "failed" and row["last_status_code"] == 503
            records, _ = await store.records(job_id, limit=100, only_types=("webhook",))
            assert records[-1]["outcome"] == "gave_up"
            assert all(r["outcome"] == "retrying" for r in records[:-1])
        finally:
            await store.close()

    try:
        run(body())
    finally:
        receiver.stop()


def test_backoff_is_exponential_with_jitter_and_capped(tmp_path: Path) -> None:
    s = make_settings(tmp_path, webhook_backoff_seconds=2.0, webhook_backoff_max_seconds=30.0)
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (9, 30.0)]:
        delays = [backoff(s, attempt) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 1  # jitter
    assert backoff(s, 1, retry_after=20) == 20  # the receiver's Retry-After wins
    assert backoff(s, 1, retry_after=999) == 30  # but never beyond the cap


def test_bad_allow_networks_setting_is_named() -> None:
    with pytest.raises(ValueError, match="TUNING_WEBHOOK_ALLOW_NETWORKS"):
        webhooks.UrlPolicy(["not-a-network"])


def test_the_events_are_one_definition() -> None:
    assert WebhookEvent.__args__ == WEBHOOK_EVENTS  # type: ignore[attr-defined]
    # Every terminal status has its event (the default ones), and nothing else is terminal.
    assert set(TERMINAL_EVENTS) == set(WEBHOOK_EVENTS) - {"job.checkpoint"}


def test_https_is_verified_against_the_urls_host_while_connecting_to_the_checked_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The POST goes to the resolved (and checked) IP, but TLS still sends SNI and verifies the certificate
    for the URL's host name."""
    import http.server
    import shutil
    import ssl
    import subprocess
    import threading

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate (as an operator's CA would)
    policy = webhooks.UrlPolicy(["127.0.0.0/8", "::1/128"])
    try:
        from tuning_service.webhooks.delivery import post

        ok = post(policy, f"https://localhost:{port}/hook", b"{}", {}, 5)
        assert ok.delivered and ok.status_code == 204
        mismatch = post(policy, f"https://127.0.0.1:{port}/hook", b"{}", {}, 5)
        assert not mismatch.delivered and "doesn't match" in (mismatch.error or "")
        assert not mismatch.permanent  # a TLS failure is retried
    finally:
        server.shutdown()
        server.server_close()


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> None:
    import socket

    def getaddrinfo(host: str, port: int, *args: Any, **kw: Any) -> list[Any]:
        family = socket.AF_INET6 if ":" in answers[0] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers]

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", getaddrinfo)


def test_a_name_is_refused_if_any_of_its_addresses_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuning_service.errors import APIError

    policy = webhooks.UrlPolicy()
    _fake_dns(monkeypatch, ["93.184.216.34", "10.0.0.7"])
    with pytest.raises(APIError) as info:
        run(policy.check("https://hooks.example.com/x"))
    assert info.value.status_code == 403 and info.value.param == "webhook_url"
    assert "10.0.0.7" in info.value.message
    # At delivery time the same answer refuses the attempt for good, without connecting anywhere.
    from tuning_service.webhooks.delivery import post

    attempt = post(policy, "https://hooks.example.com/x", b"{}", {}, 1)
    assert attempt.permanent and "10.0.0.7" in (attempt.error or "")
    _fake_dns(monkeypatch, ["93.184.216.34"])
    assert run(policy.check("https://hooks.example.com/x")) == "https://hooks.example.com/x"
    _fake_dns(monkeypatch, ["fd00::1"])
    with pytest.raises(APIError):
        run(policy.check("https://hooks.example.com/x"))
    # An allowed network lets it through.
    _fake_dns(monkeypatch, ["10.0.0.7"])
    assert (
        run(webhooks.UrlPolicy(["10.0.0.0/8"]).check("http://hooks.internal/x")) == "http://hooks.internal/x"
    )


def test_a_slow_receiver_times_out_and_is_retried() -> None:
    from tuning_service.webhooks.delivery import post

    receiver = Receiver(delay=3.0).start()
    try:
        started = time.monotonic()
        attempt = post(webhooks.UrlPolicy(["127.0.0.0/8"]), receiver.url, b"{}", {}, 0.5)
        assert time.monotonic() - started < 2.5  # the whole attempt is bounded by the timeout
        assert not attempt.delivered and not attempt.permanent
        assert "timed out" in (attempt.error or "").lower()
    finally:
        receiver.stop()

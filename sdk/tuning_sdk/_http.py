"""The HTTP transport: one `request` function over a urllib3 pool, with retries.

Retried: connection errors (refused, reset, dropped mid-response), timeouts, 408, 429 and 5xx. Never retried:
any other 4xx (the same request would fail the same way), nor a 429 ``quota_exceeded`` (a key over its quota
stays over it for hours, not seconds: `QuotaExceededError`). Delays grow exponentially with jitter; a
``Retry-After`` header wins, up to `MAX_RETRY_AFTER`. Every POST carries an ``Idempotency-Key`` made once and
sent unchanged on each retry, so a create whose answer was lost is never run twice.

urllib3 is imported with the first request, not with the SDK: `import tuning_sdk`, building a client, the
CLI's `--help` and a webhook receiver's `tuning_sdk.webhooks` never pay for the HTTP stack (the largest part
of the SDK's import time; docs/benchmarks.md, B5).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    QuotaExceededError,
    TuningError,
    make_status_error,
)
from ._version import __version__

if TYPE_CHECKING:
    import urllib3

log = logging.getLogger("tuning_sdk")

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# What platform.python_version() gives, without importing platform.
_PYTHON_VERSION = ".".join(map(str, sys.version_info[:3]))

# Indirection so tests can observe the delays without sleeping.
_sleep = time.sleep


def _should_retry_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def _should_retry(error: APIStatusError) -> bool:
    """Whether an error answer is worth another try: a retryable status, unless its code says waiting will
    not help (a quota: `QuotaExceededError`)."""
    return _should_retry_status(error.status_code or 0) and not isinstance(error, QuotaExceededError)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP date); None when absent or invalid."""
    value = None
    for key, v in headers.items():
        if key.lower() == "retry-after":
            value = v.strip()
            break
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        import email.utils  # only for the rare HTTP-date form

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds)


def retry_delay(attempt: int, headers: Mapping[str, str] | None = None) -> float:
    """How long to wait before retry number `attempt` (0-based)."""
    retry_after = parse_retry_after(headers or {})
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER)
    base = min(INITIAL_RETRY_DELAY * (2**attempt), MAX_RETRY_DELAY)
    # Full-ish jitter: spread simultaneous clients out, but never wait less than 3/4 of the base.
    return base * (1 - 0.25 * random.random())


def _decode(data: bytes) -> Any:
    if not data:
        return None
    text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


class Transport:
    """Sends requests to one service with one key. Thread-safe (urllib3's pool is)."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": f"tuning-sdk/{__version__} python/{_PYTHON_VERSION}",
            **(default_headers or {}),
        }
        self._pool: urllib3.PoolManager | None = None
        self._pool_lock = threading.Lock()

    @property
    def pool(self) -> urllib3.PoolManager:
        """The connection pool, made (and urllib3 imported) on first use."""
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._pool is None:
                    import urllib3

                    # urllib3's own retries are off: this module decides what is safe to retry.
                    self._pool = urllib3.PoolManager(maxsize=8, retries=False)
                pool = self._pool
        return pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        url = self.base_url + path
        if params:
            query = {
                k: ("true" if v is True else "false" if v is False else v)
                for k, v in params.items()
                if v is not None
            }
            if query:
                url += "?" + urlencode(query)
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: Any = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        stream: bool = False,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> Any:
        """Send one API request, retrying what is safe to retry.

        Returns the decoded JSON body, or (``stream=True``) the open urllib3 response of a 2xx answer, which
        the caller must read and release. `content` is a raw body instead of `json_body`: bytes, or a seekable
        file object with a ``__len__`` (rewound before each try, so a retry sends it whole again).

        Raises:
            APIStatusError: (a subclass of) for an error status, after any retries.
            APIConnectionError / APITimeoutError: when no answer came, after any retries.
        """
        method = method.upper()
        url = self.url(path, params)
        hdrs = dict(self._headers)
        body: Any = None
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        elif content is not None:
            body = content
            if content_type:
                hdrs["Content-Type"] = content_type
            hdrs["Content-Length"] = str(len(content))
        if method == "POST":
            # Made once, before the first try: every retry of this call carries the same key.
            hdrs["Idempotency-Key"] = idempotency_key or f"tuning-sdk-{os.urandom(16).hex()}"
        if stream:
            hdrs["Accept"] = "text/event-stream"
            hdrs["Cache-Control"] = "no-cache"
        if headers:
            hdrs.update(headers)
        retries = self.max_retries if max_retries is None else max(0, max_retries)
        t = self.timeout if timeout is None else timeout
        pool = self.pool
        from urllib3 import Timeout
        from urllib3.exceptions import HTTPError

        # Connecting should be quick even when reads may legitimately be slow (e.g. a quiet event stream).
        tmo = Timeout(connect=min(t, 10.0), read=t)

        attempt = 0
        while True:
            if hasattr(body, "seek"):
                body.seek(0)
            try:
                resp = pool.request(
                    method,
                    url,
                    body=body,
                    headers=hdrs,
                    timeout=tmo,
                    redirect=False,
                    preload_content=not stream,
                )
            except HTTPError as exc:
                error = _connection_error(exc, method, url)
                if attempt >= retries:
                    raise error from exc
                delay = retry_delay(attempt)
                log.info(
                    "%s %s failed (%s); retry %d/%d in %.2fs", method, path, exc, attempt + 1, retries, delay
                )
                _sleep(delay)
                attempt += 1
                continue

            status = resp.status
            if 200 <= status < 300:
                if stream:
                    return resp
                return _decode(resp.data)

            resp_headers = dict(resp.headers)
            try:
                data = resp.data if not stream else resp.read()
            except HTTPError:
                data = b""
            finally:
                if stream:
                    resp.release_conn()
            status_error = make_status_error(status, _decode(data), resp_headers)
            if _should_retry(status_error) and attempt < retries:
                delay = retry_delay(attempt, resp_headers)
                log.info(
                    "%s %s -> %d; retry %d/%d in %.2fs", method, path, status, attempt + 1, retries, delay
                )
                _sleep(delay)
                attempt += 1
                continue
            raise status_error


def is_timeout(exc: BaseException) -> bool:
    """Whether urllib3 raised `exc` for a timeout (not for a refused or dropped connection)."""
    from urllib3.exceptions import NewConnectionError
    from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

    # NewConnectionError subclasses urllib3's ConnectTimeoutError: a refused connection is not a timeout.
    return isinstance(exc, Urllib3TimeoutError) and not isinstance(exc, NewConnectionError)


def _connection_error(exc: Exception, method: str, url: str) -> TuningError:
    if is_timeout(exc):
        return APITimeoutError(f"{method} {url} timed out: {exc}", cause=exc)
    return APIConnectionError(f"Could not complete {method} {url}: {exc}", cause=exc)

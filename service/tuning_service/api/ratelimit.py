"""Per-API-key rate limiting: one token bucket per key, refilled continuously.

A key may send `burst` requests at once and `rate` requests per second on average; beyond that it gets
`429 rate_limited` with `Retry-After` (whole seconds until its next token). Buckets are per key id, so one
busy tenant never slows another. They live in the process's memory: with `--workers N` each worker counts on
its own (a key gets up to N times the rate), which keeps the check free of database writes.
Settings: TUNING_RATE_LIMIT_RPS (0 turns the limit off) and TUNING_RATE_LIMIT_BURST.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import APIError

# Buckets of keys idle this long are full again: forgetting them loses nothing and bounds the memory.
_IDLE_SWEEP_SECONDS = 300.0


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must be >= 0")
        self.rate = float(rate)
        self.burst = max(1, int(burst)) if rate > 0 else 0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str) -> float:
        """Take one token for `key`. Returns 0.0 if allowed, else the seconds until a token is available."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def check(self, key: str) -> None:
        """Raise `429 rate_limited` (with Retry-After) if `key` is over its rate."""
        wait = self.acquire(key)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise APIError(
                429,
                "rate_limited",
                f"Too many requests for this API key: the limit is {self.rate:g} requests/s "
                f"(bursts of {self.burst}); retry after {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < _IDLE_SWEEP_SECONDS:
            return
        self._last_sweep = now
        for key in [k for k, b in self._buckets.items() if now - b.updated > _IDLE_SWEEP_SECONDS]:
            del self._buckets[key]

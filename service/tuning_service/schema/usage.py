"""GET /v1/usage: what the calling API key holds and has used, and its limits."""

from __future__ import annotations

from typing import Literal

from .base import ResponseModel


class KeyLimits(ResponseModel):
    """A key's limits (`python -m tuning_service keys create/update --max-...`); null: no limit."""

    max_running_jobs: int | None
    """Jobs of this key holding a slot at once; more wait in the queue"""
    max_queued_jobs: int | None
    """Queued jobs of this key; a create beyond it is refused (429 quota_exceeded)"""
    max_gpu_hours: float | None
    """GPU hours over the quota window; once used, a create is refused (429 quota_exceeded)"""


class KeyUsage(ResponseModel):
    object: Literal["usage"]
    key_id: str
    running_jobs: int
    """Jobs holding a slot (running, cancelling, pausing)"""
    queued_jobs: int
    gpu_hours: float
    """GPU time of this key's runs over the last `window_days` (wall time x GPUs held; on a service
    without GPUs, x 1: process hours), the running ones up to now"""
    window_days: float
    """The quota window (TUNING_QUOTA_WINDOW_DAYS)"""
    limits: KeyLimits

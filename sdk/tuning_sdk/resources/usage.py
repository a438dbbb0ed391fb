"""`client.usage`: what the calling API key holds and has used, and its limits."""

from __future__ import annotations

from .. import _http
from .._objects import KeyUsage

__all__ = ["UsageResource"]


class UsageResource:
    """The calling API key's usage and limits. Reached as ``client.usage``."""

    def __init__(self, transport: _http.Transport) -> None:
        self._t = transport

    def retrieve(self) -> KeyUsage:
        """The key's running and queued jobs, its GPU hours in the quota window, and its limits.

        A create over one of the limits is refused with `QuotaExceededError` (429 ``quota_exceeded``, never
        retried); this shows which one and by how much.

        Returns:
            A `KeyUsage` (its `limits` are None where the key has none).

        Raises:
            AuthenticationError, APIConnectionError: as for every call.

        Example:
            >>> u = client.usage.retrieve()
            >>> f"{u.gpu_hours:.1f} of {u.limits.max_gpu_hours} GPU hours in {u.window_days:g} days"
            '3.2 of 100.0 GPU hours in 30 days'
        """
        return KeyUsage.from_dict(self._t.request("GET", "/v1/usage"))

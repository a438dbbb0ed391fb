"""`TuningClient`: configuration, the transport, and the resources hanging off it.

Each resource (and the models it returns) is imported the first time it is used, as openai-python does:
`import tuning_sdk` stays light (docs/benchmarks.md, B5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._errors import TuningError
from ._http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, Transport

if TYPE_CHECKING:
    from .resources.chat import Chat
    from .resources.completions import Completions
    from .resources.files import Files
    from .resources.models import Models
    from .resources.tunings import Tunings
    from .resources.usage import UsageResource

DEFAULT_BASE_URL = "http://localhost:8000"

__all__ = ["DEFAULT_BASE_URL", "TuningClient"]


class TuningClient:
    """Client of a tuning service.

    Args:
        api_key: the API key; defaults to the ``TUNING_API_KEY`` environment variable.
        base_url: the service's address; defaults to ``TUNING_BASE_URL``, then ``http://localhost:8000``.
        timeout: seconds to wait for a connection and for each read of a response.
        max_retries: retries of a failed request (connection errors, 408, 429, 5xx); 0 disables them.
        default_headers: extra headers sent with every request.

    Raises:
        TuningError: no API key was given and ``TUNING_API_KEY`` is not set.

    Example:
        >>> with TuningClient(api_key="test-key-001", base_url="http://localhost:8000") as client:
        ...     job = client.tunings.create(model="tiny-llama", training_file="data/train.jsonl")
        ...     job = client.tunings.wait(job.id)
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        api_key = api_key or os.environ.get("TUNING_API_KEY")
        if not api_key:
            raise TuningError(
                "No API key: pass TuningClient(api_key=...) or set the TUNING_API_KEY environment variable."
            )
        base_url = base_url or os.environ.get("TUNING_BASE_URL") or DEFAULT_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            raise TuningError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self._transport = Transport(
            base_url=self.base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )

    @cached_property
    def tunings(self) -> Tunings:
        """Fine-tuning jobs: create, get, list, wait, stream_logs, cancel, pause, resume, download, ..."""
        from .resources.tunings import Tunings

        return Tunings(self._transport)

    @cached_property
    def files(self) -> Files:
        """Training and validation files: upload, list, get, delete."""
        from .resources.files import Files

        return Files(self._transport)

    @cached_property
    def models(self) -> Models:
        """The models to try: the service's base models and this key's fine-tunes: list, retrieve, delete."""
        from .resources.models import Models

        return Models(self._transport)

    @cached_property
    def chat(self) -> Chat:
        """Chat completions (OpenAI's shape): ``client.chat.completions.create(model=..., messages=...)``."""
        from .resources.chat import Chat

        return Chat(self._transport)

    @cached_property
    def completions(self) -> Completions:
        """Text completions (OpenAI's legacy shape): ``client.completions.create(model=..., prompt=...)``."""
        from .resources.completions import Completions

        return Completions(self._transport)

    @cached_property
    def usage(self) -> UsageResource:
        """The API key's usage and limits: ``client.usage.retrieve()`` (running and queued jobs, GPU hours in
        the quota window, the key's limits)."""
        from .resources.usage import UsageResource

        return UsageResource(self._transport)

    def health_check(self) -> dict[str, Any]:
        """The service's health (no key needed).

        Returns:
            ``{"status": "healthy", "version", "uptime", "active_jobs", "total_jobs", ...}``.

        Raises:
            APIConnectionError: the service cannot be reached.

        Example:
            >>> client.health_check()["status"]
            'healthy'
        """
        body = self._transport.request("GET", "/health")
        return dict(body) if isinstance(body, Mapping) else {"status": str(body)}

    def close(self) -> None:
        """Close the pooled connections. The client must not be used afterwards.

        Example:
            >>> client.close()
        """
        self._transport.close()

    def __enter__(self) -> TuningClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never the key itself: reprs end up in logs.
        return f"TuningClient(base_url={self.base_url!r}, max_retries={self.max_retries})"

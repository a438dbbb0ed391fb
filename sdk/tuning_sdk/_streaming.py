"""Server-Sent Events: a parser that follows the WHATWG rules, and a reader over an open urllib3 response.

Reconnection (with ``Last-Event-ID``) is the caller's job, because only the caller knows what "done" means:
see `resources/tunings.py`, which resumes a job's log stream after the last record it yielded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ._errors import APIConnectionError, APITimeoutError
from ._http import is_timeout

__all__ = ["SSEDecoder", "ServerSentEvent", "iter_lines", "iter_response_events", "iter_sse"]


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event. `id` is the stream's last event id when it was dispatched (ids persist)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns lines (without their terminators) into events, one blank line at a time."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self._last_event_id: str | None = None
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str | None:
        return self._last_event_id

    def feed(self, line: str) -> ServerSentEvent | None:
        """Feed one line. Returns an event when `line` is the blank line that ends one, else None."""
        if not line:
            if not self._data:
                # No data lines: nothing to dispatch (the spec drops the event type too).
                self._event = None
                return None
            event = ServerSentEvent(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self._last_event_id,
                retry=self._retry,
            )
            self._event = None
            self._data = []
            return event
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_event_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


def iter_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Split a byte stream into lines on ``\\r\\n``, ``\\n`` or ``\\r`` (even when split across chunks).

    A final line without a terminator is not yielded: in an event stream it is an incomplete line.
    """
    buf = b""
    pending_cr = False
    for chunk in chunks:
        if not chunk:
            continue
        if pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        pending_cr = False
        buf += chunk
        start = 0
        n = len(buf)
        i = 0
        while i < n:
            c = buf[i]
            if c == 0x0A or c == 0x0D:
                yield buf[start:i].decode("utf-8", errors="replace")
                if c == 0x0D:
                    if i + 1 < n:
                        if buf[i + 1] == 0x0A:
                            i += 1
                    else:
                        pending_cr = True
                start = i + 1
            i += 1
        buf = buf[start:]


def iter_sse(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent | None]:
    """Events from a byte stream. Comments (heartbeats) come out as None, so a reader gets a tick."""
    decoder = SSEDecoder()
    for line in iter_lines(chunks):
        if line.startswith(":"):
            yield None
            continue
        event = decoder.feed(line)
        if event is not None:
            yield event


def _response_chunks(resp: Any) -> Iterator[bytes]:
    """Bytes as they arrive. Chunked bodies come chunk by chunk; others through read1 (no waiting for a
    full buffer, which would delay events)."""
    if getattr(resp, "chunked", False) and hasattr(resp, "read_chunked"):
        yield from resp.read_chunked(decode_content=True)
        return
    read1 = getattr(resp, "read1", None)
    while True:
        data = read1(65536) if read1 is not None else resp.read(1)
        if not data:
            return
        yield data


def iter_response_events(resp: Any) -> Iterator[ServerSentEvent | None]:
    """Events from an open response; a dropped or timed-out connection raises APIConnectionError
    (APITimeoutError), a clean end of the stream just ends the iteration."""
    # An open response: urllib3 is loaded already (_http imports it with the first request).
    from urllib3.exceptions import HTTPError

    try:
        yield from iter_sse(_response_chunks(resp))
    except (HTTPError, OSError) as exc:
        if is_timeout(exc):
            raise APITimeoutError(f"event stream read timed out: {exc}", cause=exc) from exc
        raise APIConnectionError(f"event stream dropped: {exc}", cause=exc) from exc

"""Server-Sent Events: a parser that follows the WHATWG rules, a reader over an open urllib3 response, and
`Stream`, the iterator of an OpenAI-style stream (``data: {json}`` events ending with ``data: [DONE]``).

Reconnection (with ``Last-Event-ID``) is the caller's job, because only the caller knows what "done" means:
see `resources/tunings.py`, which resumes a job's log stream after the last record it yielded. A `Stream` of
generated text is never resumed or retried: a second request would generate the text again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._errors import APIConnectionError, APITimeoutError, TuningError, make_stream_error
from ._http import is_timeout

__all__ = ["SSEDecoder", "ServerSentEvent", "Stream", "iter_lines", "iter_response_events", "iter_sse"]

T = TypeVar("T")


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


def _drain(events: Iterator[Any]) -> None:
    """Read what is left of a stream that is over (after ``[DONE]`` or an error event: the end of the body,
    as openai-python does), so that its connection goes back to the pool whole. Nothing there matters any
    more, failures included."""
    try:
        for _ in events:
            pass
    except Exception:
        pass


class Stream(Generic[T]):
    """The chunks of a streamed chat completion or completion, parsed as they arrive.

    Iterate it (once); it ends after the server's ``data: [DONE]``. Use it as a context manager, or call
    `close`, to stop early: that closes the HTTP connection, and the service stops generating. An error the
    service sends inside the stream (``data: {"error": {...}}``, e.g. ``engine_crashed``) raises the
    `APIStatusError` subclass of its status (`InternalServerError` for a 503) from the iteration; a
    connection that drops, or ends before ``[DONE]``, raises `APIConnectionError`. Nothing is retried once
    the stream has begun.

    Attributes:
        response: the open urllib3 response (its ``headers``: ``X-Request-ID``, ...).

    Example:
        >>> with client.chat.completions.create(model="tiny-llama", messages=msgs, stream=True) as stream:
        ...     for chunk in stream:
        ...         print(chunk.text, end="", flush=True)
    """

    def __init__(self, response: Any, parse: Callable[[Mapping[str, Any]], T]) -> None:
        self.response = response
        self._parse = parse
        self._closed = False
        self._iterator = self._chunks()

    @property
    def closed(self) -> bool:
        """True once the stream has ended, failed or been closed (its connection is given back)."""
        return self._closed

    def _headers(self) -> dict[str, str]:
        return dict(getattr(self.response, "headers", None) or {})

    def _chunks(self) -> Generator[T, None, None]:
        events = iter_response_events(self.response)
        try:
            for event in events:
                if event is None:
                    continue  # a comment: a heartbeat
                data = event.data.strip()
                if data == "[DONE]":
                    _drain(events)
                    return
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise TuningError(f"the stream sent an event that is not JSON: {data[:200]!r}") from None
                if not isinstance(obj, Mapping):
                    raise TuningError(f"the stream sent an event that is not a JSON object: {data[:200]!r}")
                if event.event == "error" or isinstance(obj.get("error"), Mapping):
                    _drain(events)
                    raise make_stream_error(obj.get("error", obj), self._headers())
                yield self._parse(obj)
            raise APIConnectionError("the stream ended before its last event (data: [DONE])")
        finally:
            self._release()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._iterator)

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Not read to its end: close the connection (the service sees the client leave and stops);
            # handed back to the pool with unread bytes, it would corrupt the next request sent over it.
            if not self.response.closed and self.response.length_remaining != 0:
                self.response.close()
        finally:
            self.response.release_conn()

    def close(self) -> None:
        """Stop reading: close the connection (the service stops generating). Safe to call twice."""
        try:
            self._iterator.close()  # runs the generator's clean-up if it had started
        except ValueError:  # being iterated in another thread right now: close the connection under it
            pass
        self._release()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned stream (never iterated to its end, never closed) still gives its connection up.
        try:
            self._release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Stream(closed={self._closed})"

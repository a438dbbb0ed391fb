"""Stream a directory (a job's adapter or a checkpoint) as a tar.gz, never built in memory or on disk.

`tarfile` writes the archive in a worker thread into a bounded queue; the response body reads from that queue.
The bound gives back-pressure (a slow client slows the writer), and a client that goes away stops the writer
at its next chunk. Members sit at the top of the archive, so unpacking it into a directory gives a folder
`PeftModel.from_pretrained` loads. The optimizer state of a checkpoint (`trainer_state.pt`) is left out: it
is only useful to resume on the server, and it is the biggest file.
"""

from __future__ import annotations

import asyncio
import queue
import tarfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

EXCLUDED = frozenset({"trainer_state.pt"})
CHUNK_BYTES = 256 * 1024
QUEUE_CHUNKS = 16


class _Stopped(Exception):
    """The reader went away: stop writing."""


class _QueueWriter:
    """A write-only file object that hands fixed-size chunks to a queue."""

    def __init__(self, q: queue.Queue[bytes | BaseException | None], stop: threading.Event) -> None:
        self.q = q
        self.stop = stop
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        while len(self.buf) >= CHUNK_BYTES:
            self._put(bytes(self.buf[:CHUNK_BYTES]))
            del self.buf[:CHUNK_BYTES]
        return len(data)

    def flush(self) -> None:
        pass

    def close_out(self) -> None:
        if self.buf:
            self._put(bytes(self.buf))
            self.buf.clear()

    def _put(self, item: bytes) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue


def members(folder: Path) -> list[Path]:
    """Regular files under `folder` (recursively), sorted, without excluded names or symlinks."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name not in EXCLUDED
    )


def _write_archive(folder: Path, writer: _QueueWriter) -> None:
    with tarfile.open(fileobj=writer, mode="w|gz") as tar:  # type: ignore[call-overload]
        for path in members(folder):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    writer.close_out()


async def tar_gz_stream(folder: Path) -> AsyncIterator[bytes]:
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
    stop = threading.Event()
    writer = _QueueWriter(q, stop)

    def produce() -> None:
        try:
            _write_archive(folder, writer)
            end: BaseException | None = None
        except _Stopped:
            return
        except BaseException as exc:  # re-raised by the reader: the response is cut short, never truncated
            end = exc
        while not stop.is_set():
            try:
                q.put(end, timeout=0.5)
                return
            except queue.Full:
                continue

    def take() -> bytes | BaseException | None:
        # Polls, so that the worker thread is never stuck in get() once the response has been abandoned.
        while True:
            try:
                return q.get(timeout=0.5)
            except queue.Empty:
                if stop.is_set():
                    return None

    thread = threading.Thread(target=produce, name="tar-gz-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = await asyncio.to_thread(take)
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()

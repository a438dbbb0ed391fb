"""A run's records from its stdout alone (the Ray executor): the trainer prints each record as one line that
starts with RECORD_MARKER (tuning_trainer/events.py), mixed with the launcher's and Ray's own lines. Only a
line that starts with it is a record: text that merely contains it (a printed sample, say) stays a log line.

The stream is replayed from its first byte whenever it is read again (a reconnect, a restarted service), so
positions are counted in lines and records carry the trainer's sequence number: lines before the stored line
count are skipped, and a record whose `seq` is not above the last stored one is dropped, so no record is ever
stored twice and none is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tuning_trainer.events import RECORD_MARKER

from .. import tailer
from ..tailer import Record

# Record fields that hold a path the trainer wrote (as the workers see the shared storage).
PATH_FIELDS = ("path", "checkpoint_path", "adapter_path")


class LineBuffer:
    """Complete lines of a stream that arrives in chunks of any size (a chunk may end inside a line)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.first = 0  # the stream's line number (0-based) of lines[0]
        self._partial = ""

    def feed(self, chunk: str) -> None:
        parts = (self._partial + chunk).split("\n")
        self._partial = parts.pop()
        self.lines.extend(parts)

    def since(self, line: int) -> list[str]:
        """The complete lines from stream line `line` on; the ones before it are not kept any longer."""
        drop = min(max(0, line - self.first), len(self.lines))
        if drop:
            del self.lines[:drop]
            self.first += drop
        return self.lines[max(0, line - self.first) :]


def split_lines(text: str, *, final: bool) -> list[str]:
    """The lines of a whole log; without `final` a last line with no newline is not complete yet."""
    lines = text.split("\n")
    last = lines.pop()
    if final and last:
        lines.append(last)
    return lines


def stream_records(
    lines: list[str], *, last_seq: int, to_service_path: Callable[[str], str] = str
) -> tuple[list[Record], int]:
    """Records for new lines of a run's stdout, and the highest record sequence number seen: a marker line is
    a trainer record (dropped when its `seq` is not above `last_seq`), any other line a `log` record."""
    out: list[Record] = []
    now = time.time()
    for raw in lines:
        text = raw.rstrip("\r")
        if not text.startswith(RECORD_MARKER):  # (the trainer starts each record on a line of its own)
            if text.strip():
                out.append(("log", now, {"line": tailer.log_text(text.encode("utf-8"))}))
            continue
        payload = text[len(RECORD_MARKER) :]
        try:
            record, seq = tailer.parse_sequenced(payload.encode("utf-8"))
        except ValueError as exc:
            msg = f"[service] a record line of the trainer's output skipped: {exc}"
            out.append(("log", now, {"line": msg, "source": "service"}))
            continue
        if seq is not None:
            if seq <= last_seq:
                continue  # stored before the stream was replayed
            last_seq = seq
        type_, t, fields = record
        for key in PATH_FIELDS:
            if isinstance(fields.get(key), str):
                fields[key] = to_service_path(fields[key])
        out.append((type_, t, fields))
    return out, last_seq

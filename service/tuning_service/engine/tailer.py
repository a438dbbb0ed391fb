"""Reading the trainer's files incrementally: events.jsonl (JSON records) and output.log (plain lines).

A line is complete only once its newline is written; a partial last line is left for the next read, so the
byte offset stored with the job always points at the start of a line. Offsets make re-reading idempotent: a
supervisor that re-attaches continues exactly where the last one committed.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

# Bytes read per file per tick: bounds the work (and one transaction) when a trainer floods its output.
READ_CHUNK = 1 << 20
# A log record carries at most this many characters of one output line.
MAX_LOG_LINE = 8192
# Record types the trainer may not write: they are the service's own.
SERVICE_TYPES = frozenset({"status", "log"})

Record = tuple[str, float, dict[str, Any]]


def read_lines(
    path: Path, offset: int, *, final: bool = False, chunk: int = READ_CHUNK
) -> tuple[list[bytes], int]:
    """Complete lines of `path` from byte `offset` (without their newline) and the offset after them.

    With `final` (the writer is gone) a trailing line without newline counts as complete. A single line longer
    than `chunk` is cut into chunk-sized pieces rather than stalling the reader.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(chunk)
            at_eof = len(data) < chunk or not f.read(1)
    except FileNotFoundError:
        return [], offset
    if not data:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        if (final and at_eof) or len(data) >= chunk:
            return [data], offset + len(data)
        return [], offset
    lines = data[:end].split(b"\n")
    consumed = end + 1
    rest = data[consumed:]
    if rest and final and at_eof:
        lines.append(rest)
        consumed += len(rest)
    return lines, offset + consumed


def parse_event(line: bytes) -> Record:
    """One events.jsonl line -> (type, time, fields). Raises ValueError saying what is wrong."""
    return parse_sequenced(line)[0]


def parse_sequenced(line: bytes) -> tuple[Record, int | None]:
    """One record line -> ((type, time, fields), the trainer's `seq` if it has a valid one)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    type_ = obj.pop("type", None)
    if not isinstance(type_, str) or not type_:
        raise ValueError('no "type" field')
    if type_ in SERVICE_TYPES:
        raise ValueError(f"type {type_!r} is reserved for the service")
    t = obj.pop("time", None)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        t = time.time()
    seq = obj.pop("seq", None)
    valid_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    return (type_, float(t), obj), valid_seq


def event_records(lines: list[bytes], first_lineno: int) -> list[Record]:
    """Records for events.jsonl lines; a malformed line becomes a service `log` record and is skipped."""
    out: list[Record] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(parse_event(line))
        except ValueError as exc:
            msg = f"[service] events.jsonl line {first_lineno + i} skipped: {exc}"
            out.append(("log", time.time(), {"line": msg, "source": "service"}))
    return out


def log_text(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\r")
    if "\r" in text:  # progress bars redraw with \r: keep what a terminal would show last
        parts = [p for p in text.split("\r") if p.strip()]
        text = parts[-1] if parts else ""
    if len(text) > MAX_LOG_LINE:
        text = text[:MAX_LOG_LINE] + "…"
    return text


def log_records(lines: list[bytes]) -> list[Record]:
    now = time.time()
    return [("log", now, {"line": log_text(line)}) for line in lines]


def log_tail(path: Path, n: int = 20, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `n` lines of a text file (reading at most its last `max_bytes`)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    lines: deque[str] = deque(maxlen=n)
    for raw in data.splitlines():
        text = log_text(raw)
        if text.strip():
            lines.append(text)
    return list(lines)

"""The JSON-lines event writer: `events.jsonl` in the output directory (docs/trainer-protocol.md).

Only the main process writes. Each record is one line, written with a single write() and flushed at once,
so a reader tailing the file sees whole records promptly. Only the records a restart depends on
(`checkpoint` and the terminal ones) are also fsynced: a metrics record lost with the machine costs nothing,
and an fsync per step costs milliseconds on the training loop's path.

Every record of a run carries `seq` (1, 2, 3...). With TUNING_RECORDS_TO_STDOUT=1 each record is also
printed on stdout as one line that starts with RECORD_MARKER: a trainer run by Ray Jobs reaches the service
through its log stream alone, mixed with Ray's own lines, replayed from the start after a reconnect (the
marker finds the records, the sequence number drops the ones already stored).

Listeners (the experiment trackers, trackers.py) see the records the writer writes, and nothing when it is
disabled (a process other than the main one): `after(record)` once each record is written, and
`before_terminal(record)` just before the terminal record, so that whatever a listener reports while ending
(a `warning`) still comes before the terminal record, which is a run's last. A listener must not raise: an
exception would surface on the training loop's path.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

TERMINAL = ("completed", "failed", "interrupted")
DURABLE = frozenset({"checkpoint", *TERMINAL})
# The prefix of a record line on stdout; the rest of the line is the record's JSON.
RECORD_MARKER = "@@tuning-record@@ "
STDOUT_ENV = "TUNING_RECORDS_TO_STDOUT"


class Listener(Protocol):
    def before_terminal(self, record: dict[str, Any]) -> None: ...

    def after(self, record: dict[str, Any]) -> None: ...


def _clean(value: Any) -> Any:
    # JSON has no NaN/Infinity: a diverged loss is written as null rather than an unparseable token.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    def __init__(self, path: str | Path, *, enabled: bool = True, to_stdout: bool | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.to_stdout = os.environ.get(STDOUT_ENV) == "1" if to_stdout is None else to_stdout
        self.terminal_written: str | None = None
        self._fh: Any = None
        self._seq = 0
        self.listeners: list[Listener] = []

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        record = {"type": type_, "time": time.time(), **_clean(fields)}
        if type_ in TERMINAL:
            if self.terminal_written is not None:
                # Exactly one terminal record per run: a second one would contradict the first.
                return record
            self.terminal_written = type_
        if not self.enabled:
            return record
        if type_ in TERMINAL:
            for listener in list(self.listeners):
                listener.before_terminal(record)
        self._seq += 1
        record["seq"] = self._seq
        line = json.dumps(record, default=str, allow_nan=False)
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        self._fh.write(line + "\n")
        self._fh.flush()
        if type_ in DURABLE:
            os.fsync(self._fh.fileno())
        if self.to_stdout:
            # One write: a line is never split by another thread's output. The newline first ends whatever
            # was printed without one (a progress bar), so the record starts a line of its own, as readers
            # require (a blank line is nothing to them).
            sys.stdout.write("\n" + RECORD_MARKER + line + "\n")
            sys.stdout.flush()
        for listener in list(self.listeners):
            listener.after(record)
        return record

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Parse an events file, ignoring a partial last line (a reader's view of the protocol)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        out.append(json.loads(line))
    return out

"""The service log: each record formatted once and written to stderr and to `<data_dir>/tuning_service.log`;
the access log's one line per request built without a `LogRecord` and written in batches.

Why a batch: writing and flushing every access line to both places was two `write` system calls, a
`LogRecord` (with its `getpid` call) and a `Formatter` pass per request, the largest share of what a
`tunings.get` costs over a bare Starlette route (docs/benchmarks.md, B1). Access lines now wait at most
FLUSH_SECONDS (or until FLUSH_BYTES are waiting) and go out in one write to each place. Every other record
is written at once, after whatever access lines were waiting, so the file stays in order. A service killed
with SIGKILL loses at most the last FLUSH_SECONDS of access lines; `logging.shutdown` (at exit) and the end of
the lifespan write what is waiting.

The log file is opened unbuffered in append mode: each batch is one `write`, and O_APPEND keeps the lines of
several uvicorn workers (each with its own sink) whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import BinaryIO, TextIO

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
ACCESS_LOGGER = "tuning_service.access"
FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 * 1024

access_log = logging.getLogger(ACCESS_LOGGER)


class LogSink(logging.Handler):
    """The handler of the `tuning_service` logger: records at once, access lines (`access`) in batches."""

    def __init__(self, stderr: TextIO, log_file: BinaryIO | None) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))
        self.stderr = stderr
        self.file = log_file
        # A sink is made by each worker's lifespan (after any fork), so the pid is this process's.
        self._access_prefix = f" INFO {os.getpid()} {ACCESS_LOGGER}: "
        # Its own lock (not the Handler's, typed Optional): records may come from worker threads.
        self._lock = threading.RLock()
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._second = -1
        self._second_text = ""
        self._write_failed = False
        self.open = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        with self._lock:
            self._pending.append(line)
            self._write_pending()

    def access(self, message: str) -> None:
        """Queue one access line, in the same format as `FORMAT` gives a record of the access logger."""
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = f"{self._second_text},{int((now - second) * 1000):03d}{self._access_prefix}{message}\n"
        with self._lock:
            self._pending.append(line)
            self._pending_bytes += len(line)
            if self._pending_bytes >= FLUSH_BYTES:
                self._write_pending()
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not called from an event loop: nothing would come back to write it
                self._write_pending()
                return
            # A timer of another loop (a lifespan that ended, in tests) would never fire: start a new one.
            if self._timer is None or self._timer_loop is not loop:
                self._timer = loop.call_later(FLUSH_SECONDS, self.flush)
                self._timer_loop = loop

    def flush(self) -> None:
        """Write the access lines that are waiting (the timer's callback; also called by logging.shutdown)."""
        with self._lock:
            self._timer = None
            if self._pending:
                self._write_pending()

    def _write_pending(self) -> None:
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        try:
            self.stderr.write(text)
            self.stderr.flush()
        except (OSError, ValueError) as exc:  # a closed pipe: the file still gets the lines
            self._report(exc)
        if self.file is not None:
            data = memoryview(text.encode("utf-8", "backslashreplace"))
            try:
                while data:  # a raw write may take less than all of it
                    written = self.file.write(data)
                    if not written:
                        raise OSError("the log file took no bytes")
                    data = data[written:]
            except (OSError, ValueError) as exc:  # a full disk, a closed file: say so once, keep serving
                self._report(exc)

    def _report(self, exc: Exception) -> None:
        if not self._write_failed:
            self._write_failed = True
            print(f"tuning_service: cannot write the service log: {exc}", file=sys.__stderr__)

    def close(self) -> None:
        with self._lock:
            self.open = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._pending:
                self._write_pending()
            if self.file is not None:
                self.file.close()  # never stderr
                self.file = None
        super().close()


_sink: LogSink | None = None


def configure(level: str | int, log_path: os.PathLike[str] | str) -> LogSink:
    """Service log to stderr and to `log_path` (appended; every worker writes to it)."""
    global _sink
    logger = logging.getLogger("tuning_service")
    logger.setLevel(level)
    logger.propagate = False
    # Re-running the lifespan in one process (tests, reload) must not stack handlers.
    for handler in list(logger.handlers):
        if isinstance(handler, LogSink):
            logger.removeHandler(handler)
            handler.close()
    log_file: BinaryIO | None = None
    try:
        log_file = open(log_path, "ab", buffering=0)  # noqa: SIM115 (closed by the sink)
    except OSError as exc:
        print(f"tuning_service: cannot write {log_path}: {exc}", file=sys.stderr)
    sink = LogSink(sys.stderr, log_file)
    logger.addHandler(sink)
    _sink = sink
    return sink


def access(message: str) -> None:
    """One access line: through the sink when the service configured one, else as an ordinary record (an
    application embedded with its own logging set-up)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    sink = _sink
    if sink is not None and sink.open and not access_log.handlers:
        sink.access(message)
        return
    # makeRecord + handle is what `access_log.info` does, minus its walk up the stack for the caller's file
    # and line, which the log format does not show.
    access_log.handle(access_log.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, message, (), None))


def flush() -> None:
    if _sink is not None:
        _sink.flush()

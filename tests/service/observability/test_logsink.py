"""The service log (logsink.py): records formatted once to stderr and the log file, access lines batched and
written within FLUSH_SECONDS, in order with every other record, and never lost at a graceful stop."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServiceEnv
from tuning_service.observability import logsink

# What logging.Formatter(logsink.FORMAT) writes: "2026-11-26 17:00:48,123 INFO 42 tuning_service.access: ..."
_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<pid>\d+) (?P<name>[\w.]+): (?P<msg>.*)$"
)


@pytest.fixture
def sink(tmp_path: Path) -> Any:
    stderr = io.StringIO()
    s = logsink.LogSink(stderr, open(tmp_path / "service.log", "ab", buffering=0))  # noqa: SIM115 (closed below)
    s.setLevel(logging.INFO)
    yield s, stderr, tmp_path / "service.log"
    s.close()


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("tuning_service.api", level, __file__, 1, msg, (), None)


def test_access_lines_wait_for_the_timer_then_go_out_together_in_the_records_format(sink: Any) -> None:
    s, stderr, path = sink

    async def main() -> tuple[str, str]:
        s.access("GET /v1/tunings.get/ftjob-1 200 1.2ms rid=a")
        s.access("GET /v1/tunings.get/ftjob-2 404 0.9ms rid=b")
        before = path.read_text()
        await asyncio.sleep(logsink.FLUSH_SECONDS * 3)
        return before, path.read_text()

    before, after = asyncio.run(main())
    assert before == ""  # batched: nothing written per request
    lines = after.splitlines()
    assert [(_LINE.match(x) or pytest.fail(x))["msg"] for x in lines] == [
        "GET /v1/tunings.get/ftjob-1 200 1.2ms rid=a",
        "GET /v1/tunings.get/ftjob-2 404 0.9ms rid=b",
    ]
    first = _LINE.match(lines[0])
    assert first is not None and first["level"] == "INFO" and first["name"] == "tuning_service.access"
    assert stderr.getvalue() == after  # the same text in both places
    # The timestamp is the one logging.Formatter would write for a record made now, to the second.
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    assert lines[0].startswith(stamp[:13])


def test_a_record_writes_the_waiting_access_lines_first_so_the_file_stays_in_order(sink: Any) -> None:
    s, stderr, path = sink

    async def main() -> None:
        s.access("GET /a 200 1.0ms rid=1")
        s.handle(_record(logging.WARNING, "something odd"))  # written at once, after the waiting line
        assert [m["msg"] for m in map(_LINE.match, path.read_text().splitlines()) if m] == [
            "GET /a 200 1.0ms rid=1",
            "something odd",
        ]
        await asyncio.sleep(logsink.FLUSH_SECONDS * 2)  # the timer finds nothing left: no duplicate

    asyncio.run(main())
    assert len(path.read_text().splitlines()) == 2 and stderr.getvalue() == path.read_text()


def test_a_full_batch_is_written_at_once_and_outside_a_loop_nothing_waits(sink: Any) -> None:
    s, _, path = sink

    message = "GET /v1/tunings.list 200 3.0ms rid=" + "x" * 100

    async def main() -> int:
        sent = 0
        while not path.read_text():  # never yields to the loop: the timer cannot be what writes them
            s.access(message)
            sent += 1
            assert sent * len(message) <= logsink.FLUSH_BYTES, "FLUSH_BYTES waiting and still not written"
        return sent

    n = asyncio.run(main())
    assert len(path.read_text().splitlines()) == n
    s.access("GET /late 200 1.0ms rid=z")  # no running loop: no timer could ever write it
    assert path.read_text().splitlines()[-1].endswith("GET /late 200 1.0ms rid=z")


def test_close_and_flush_write_what_waits_and_a_failed_write_is_reported_once(
    sink: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    s, _, path = sink

    async def main() -> None:
        s.access("GET /one 200 1.0ms rid=1")
        s.flush()
        assert path.read_text().endswith("rid=1\n")
        s.access("GET /two 200 1.0ms rid=2")
        s.close()  # the lifespan's end: the waiting line is written, the timer cancelled

    asyncio.run(main())
    assert path.read_text().endswith("rid=2\n") and not s.open

    broken = logsink.LogSink(io.StringIO(), open(path, "ab", buffering=0))  # noqa: SIM115
    assert broken.file is not None
    broken.file.close()  # a write to it raises ValueError
    for i in range(3):
        broken.handle(_record(logging.ERROR, f"boom {i}"))  # never raises into the request
    assert capfd.readouterr().err.count("cannot write the service log") == 1
    broken.file = None
    broken.close()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("with_sink", [False, True])
def test_access_lines_are_ordinary_records_when_something_else_listens(
    monkeypatch: pytest.MonkeyPatch, sink: Any, with_sink: bool
) -> None:
    """No sink (an application mounting the service with its own logging set-up), or a handler of its own on
    the access logger: every access line is a record that handler gets, once, and the sink queues nothing."""
    s, _, path = sink
    monkeypatch.setattr(logsink, "_sink", s if with_sink else None)
    collect = _Collect()
    level = logsink.access_log.level
    logsink.access_log.addHandler(collect)
    logsink.access_log.setLevel(logging.INFO)  # setLevel, not the attribute: it clears isEnabledFor's cache
    try:
        logsink.access("GET /v1/tunings.list 200 2.0ms rid=q")
    finally:
        logsink.access_log.removeHandler(collect)
        logsink.access_log.setLevel(level)
    assert collect.messages == ["GET /v1/tunings.list 200 2.0ms rid=q"]
    s.flush()
    assert path.read_text() == ""  # not through the sink's batch (the sink is not on this logger's path)


def test_a_served_service_logs_each_request_soon_and_all_of_them_by_its_stop(
    light_service_env: ServiceEnv,
) -> None:
    svc = light_service_env.start("logsink", extra_env={"TUNING_MAX_CONCURRENT_JOBS": "0"})
    log_path = svc.data_dir / "tuning_service.log"
    try:
        svc.get("/v1/tunings.list", headers={"X-Request-ID": "soon-1"})
        deadline = time.monotonic() + 5
        while "rid=soon-1" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "GET /v1/tunings.list 200" in log_path.read_text()
        for i in range(20):
            svc.get("/v1/tunings.get/ftjob-0000", headers={"X-Request-ID": f"last-{i}"})
    finally:
        svc.shutdown()  # SIGTERM right after the last request: the lifespan's end writes what waits
    text = log_path.read_text()
    assert all(f"rid=last-{i}" in text for i in range(20)), text[-2000:]
    assert all(f"rid=last-{i}" in svc.output() for i in range(20))  # and on stderr

from __future__ import annotations

import json
from pathlib import Path

from tuning_service.engine.tailer import (
    MAX_LOG_LINE,
    event_records,
    log_records,
    log_tail,
    parse_event,
    read_lines,
)


def test_only_complete_lines_are_read(tmp_path: Path) -> None:
    f = tmp_path / "events.jsonl"
    f.write_bytes(b'{"type": "a"}\n{"type": "b"}\n{"type": "c", "x"')
    lines, off = read_lines(f, 0)
    assert lines == [b'{"type": "a"}', b'{"type": "b"}'] and off == 28
    assert read_lines(f, off) == ([], off)  # the partial line waits
    with open(f, "ab") as fh:
        fh.write(b": 1}\n")
    lines, off2 = read_lines(f, off)
    assert lines == [b'{"type": "c", "x": 1}'] and off2 == f.stat().st_size
    assert read_lines(tmp_path / "missing", 7) == ([], 7)


def test_final_read_takes_the_unterminated_tail(tmp_path: Path) -> None:
    f = tmp_path / "output.log"
    f.write_bytes(b"one\ntwo")
    assert read_lines(f, 0) == ([b"one"], 4)
    assert read_lines(f, 4, final=True) == ([b"two"], 7)
    assert read_lines(f, 0, final=True) == ([b"one", b"two"], 7)


def test_overlong_line_does_not_stall(tmp_path: Path) -> None:
    f = tmp_path / "output.log"
    f.write_bytes(b"x" * 100 + b"\nok\n")
    lines, off = read_lines(f, 0, chunk=40)
    assert lines == [b"x" * 40] and off == 40
    lines, off = read_lines(f, off, chunk=40)
    assert lines == [b"x" * 40] and off == 80
    lines, off = read_lines(f, off, chunk=40)
    assert lines == [b"x" * 20, b"ok"] and off == 104


def test_parse_event() -> None:
    assert parse_event(b'{"type": "metrics", "time": 5, "step": 1, "seq": 99}') == (
        "metrics",
        5.0,
        {"step": 1},
    )
    t, when, data = parse_event('{"type": "eval", "eval_loss": 1.5, "note": "é"}'.encode())
    assert t == "eval" and when > 1e9 and data == {"eval_loss": 1.5, "note": "é"}  # no time: now
    for bad, why in [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"step": 1}', 'no "type"'),
        (b'{"type": "status", "status": "succeeded"}', "reserved"),
        (b'\xff{"type": "x"}', "not UTF-8"),
    ]:
        try:
            parse_event(bad)
        except ValueError as exc:
            assert why in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_malformed_lines_become_service_log_records() -> None:
    recs = event_records([b'{"type": "started"}', b"", b"{oops", b'{"type": "metrics", "step": 2}'], 10)
    assert [r[0] for r in recs] == ["started", "log", "metrics"]
    assert recs[1][2]["line"].startswith("[service] events.jsonl line 12 skipped: not valid JSON")
    assert recs[1][2]["source"] == "service"


def test_log_records_and_tail(tmp_path: Path) -> None:
    recs = log_records([b"plain", b"10%\r50%\r100%", "naïve".encode(), b"\xffbad", b"y" * (MAX_LOG_LINE + 5)])
    lines = [r[2]["line"] for r in recs]
    assert lines[:4] == ["plain", "100%", "naïve", "\ufffdbad"]
    assert len(lines[4]) == MAX_LOG_LINE + 1 and lines[4].endswith("…")
    f = tmp_path / "output.log"
    f.write_text("\n".join(f"line {i}" for i in range(100)) + "\n\n")
    assert log_tail(f, 3) == ["line 97", "line 98", "line 99"]
    assert log_tail(tmp_path / "none") == []
    json.dumps(recs)  # records are JSON-serialisable

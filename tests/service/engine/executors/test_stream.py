"""A run's records from its stdout (stream.py): lines from chunks, the marker, deduplication by seq."""

from __future__ import annotations

import json

from tuning_service.engine.executors.stream import LineBuffer, split_lines, stream_records
from tuning_trainer.events import RECORD_MARKER


def rec(seq: int, type_: str = "metrics", **fields: object) -> str:
    return RECORD_MARKER + json.dumps({"type": type_, "time": 1.0, "seq": seq, **fields})


def test_a_line_split_across_chunks_is_one_line_once_complete() -> None:
    buf = LineBuffer()
    buf.feed("Running entrypoint for job x\n" + rec(1)[:10])
    assert buf.since(0) == ["Running entrypoint for job x"]
    buf.feed(rec(1)[10:] + "\nhalf")
    assert buf.since(0) == ["Running entrypoint for job x", rec(1)]
    # Lines before a stored position are dropped from memory, and never handed out again.
    assert buf.since(1) == [rec(1)] and buf.first == 1
    assert buf.since(2) == [] and buf.lines == []
    buf.feed(" done\n")
    assert buf.since(2) == ["half done"]


def test_records_behind_the_marker_the_rest_are_log_lines() -> None:
    lines = ["Running entrypoint for job ftjob-1: exec python ...", rec(1, "started", total_steps=2), "",
             "step 1 loss 2.0", rec(2, step=1, loss=2.0)]  # fmt: skip
    out, last = stream_records(lines, last_seq=0)
    assert [(t, f.get("step"), f.get("line")) for t, _, f in out] == [
        ("log", None, "Running entrypoint for job ftjob-1: exec python ..."),
        ("started", None, None),
        ("log", None, "step 1 loss 2.0"),
        ("metrics", 1, None),
    ]
    assert last == 2
    assert "seq" not in out[1][2] and out[1][1] == 1.0  # the service numbers its own records


def test_a_replayed_stream_stores_no_record_twice() -> None:
    lines = [rec(1, "started"), rec(2, step=1), rec(3, step=2)]
    first, last = stream_records(lines[:2], last_seq=0)
    assert len(first) == 2 and last == 2
    # After a reconnect the stream starts over: records up to the stored seq are dropped.
    again, last = stream_records(lines, last_seq=last)
    assert [f["step"] for _, _, f in again] == [2] and last == 3


def test_only_a_line_that_starts_with_the_marker_is_a_record_and_bad_record_lines() -> None:
    out, last = stream_records(
        [
            "50%|#####     ",  # a progress bar, ended by the newline the trainer writes before a record
            rec(1, step=1),
            "sample: " + rec(9, step=9),  # printed text that contains the marker: a log line, not a record
            RECORD_MARKER + "{not json",
            rec(2, "status"),
            RECORD_MARKER + "[1]",
        ],
        last_seq=0,
    )
    assert out[0][0] == "log" and out[0][2] == {"line": "50%|#####     "}
    assert out[1][0] == "metrics" and last == 1  # the forged seq 9 suppressed nothing
    assert out[2][0] == "log" and out[2][2]["line"].startswith("sample: ")
    skipped = [f["line"] for t, _, f in out[3:]]
    assert len(skipped) == 3 and all(s.startswith("[service] a record line") for s in skipped)
    assert "not valid JSON" in skipped[0] and "reserved for the service" in skipped[1]


def test_paths_in_records_are_mapped_to_the_services_view() -> None:
    lines = [rec(1, "checkpoint", step=2, path="/mnt/w/jobs/j/checkpoints/checkpoint-2"),
             rec(2, "completed", adapter_path="/mnt/w/jobs/j/adapter", final_loss=1.0)]  # fmt: skip
    out, _ = stream_records(lines, last_seq=0, to_service_path=lambda p: p.replace("/mnt/w", "/srv/t"))
    assert out[0][2]["path"] == "/srv/t/jobs/j/checkpoints/checkpoint-2"
    assert out[1][2]["adapter_path"] == "/srv/t/jobs/j/adapter" and out[1][2]["final_loss"] == 1.0


def test_split_lines_keeps_a_last_partial_line_only_at_the_end() -> None:
    assert split_lines("a\nb\nc", final=False) == ["a", "b"]
    assert split_lines("a\nb\nc", final=True) == ["a", "b", "c"]
    assert split_lines("a\n", final=True) == ["a"]

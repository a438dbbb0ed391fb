from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuning_trainer import events
from tuning_trainer.events import EventWriter, read_events


def test_each_record_is_one_complete_line_with_type_and_time(tmp_path: Path) -> None:
    w = EventWriter(tmp_path / "out" / "events.jsonl")
    w.write("started", total_steps=3)
    # Written and flushed at once: a reader sees it before the writer is closed.
    lines = (tmp_path / "out" / "events.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["type"] == "started" and record["total_steps"] == 3 and isinstance(record["time"], float)
    w.close()


def test_exactly_one_terminal_record(tmp_path: Path) -> None:
    w = EventWriter(tmp_path / "events.jsonl")
    w.write("completed", final_loss=0.5)
    w.write("failed", code="training_error", message="late")
    w.close()
    assert [r["type"] for r in read_events(tmp_path / "events.jsonl")] == ["completed"]


def test_non_finite_numbers_become_null(tmp_path: Path) -> None:
    w = EventWriter(tmp_path / "events.jsonl")
    w.write("metrics", loss=float("nan"), grad_norm=float("inf"), nested={"x": float("-inf")})
    w.close()
    (record,) = read_events(tmp_path / "events.jsonl")
    assert record["loss"] is None and record["grad_norm"] is None and record["nested"] == {"x": None}


def test_non_main_process_writes_nothing(tmp_path: Path) -> None:
    w = EventWriter(tmp_path / "events.jsonl", enabled=False)
    w.write("started", total_steps=1)
    w.close()
    assert not (tmp_path / "events.jsonl").exists()


def test_reader_ignores_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "started", "time": 1}\n{"type": "metr')
    assert [r["type"] for r in read_events(path)] == ["started"]


def test_only_checkpoint_and_terminal_records_are_fsynced(tmp_path: Path, monkeypatch: Any) -> None:
    synced: list[int] = []
    monkeypatch.setattr(events.os, "fsync", synced.append)
    w = EventWriter(tmp_path / "events.jsonl")
    for type_ in ("started", "metrics", "metrics", "eval", "checkpoint", "metrics", "completed"):
        w.write(type_)
    w.close()
    types = [r["type"] for r in read_events(tmp_path / "events.jsonl")]
    assert len(types) == 7  # every record is written (and flushed)
    assert len(synced) == 2  # the checkpoint and the terminal one reach the disk before the writer goes on

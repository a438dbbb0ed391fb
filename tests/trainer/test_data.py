"""data.py: every format is recognised; every bad file gives its own code and the line number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuning_trainer import data
from tuning_trainer.data import DataError, validate_file

GOOD = {
    "chat": {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    },
    "completion": {"prompt": "2+2=", "completion": "4"},
    "text": {"text": "plain text"},
    "alpaca": {"instruction": "add", "input": "2 and 2", "output": "4"},
}


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_every_format_parses(tmp_path: Path, fmt: str) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD[fmt])] * 3 + [""])
    summary = validate_file(path)
    assert (summary.format, summary.num_examples) == (fmt, 3)


def test_alpaca_input_is_optional(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"instruction": "say hi", "output": "hi"})])
    assert validate_file(path).format == "alpaca"


CHAT = json.dumps(GOOD["chat"])


@pytest.mark.parametrize(
    ("lines", "code", "line"),
    [
        ([], data.EMPTY_FILE, None),
        (["", "   "], data.EMPTY_FILE, None),
        ([CHAT, "{not json"], data.INVALID_JSON, 2),
        ([CHAT, CHAT, json.dumps({"question": "q", "answer": "a"})], data.UNKNOWN_FORMAT, 3),
        ([json.dumps([1, 2])], data.UNKNOWN_FORMAT, 1),
        ([CHAT, json.dumps({"messages": [{"role": "user", "content": "q"}]})], data.NO_ASSISTANT_TURN, 2),
        (
            [
                json.dumps(
                    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}
                )
            ],
            data.NO_ASSISTANT_TURN,
            1,
        ),
        ([CHAT, b'{"text": "caf\xe9"}'], data.INVALID_ENCODING, 2),
        ([CHAT, json.dumps(GOOD["text"])], data.MIXED_FORMATS, 2),
        ([json.dumps({"messages": [{"role": "wizard", "content": "q"}]})], data.INVALID_FIELD, 1),
        ([json.dumps({"prompt": "p", "completion": 3})], data.INVALID_FIELD, 1),
        ([json.dumps({"messages": []})], data.INVALID_FIELD, 1),
    ],
    ids=[
        "empty",
        "blank",
        "invalid-json",
        "unknown-shape",
        "not-an-object",
        "no-assistant",
        "empty-assistant",
        "non-utf8",
        "mixed",
        "bad-role",
        "bad-type",
        "no-messages",
    ],
)
def test_bad_files(tmp_path: Path, lines: list[str | bytes], code: str, line: int | None) -> None:
    path = write_lines(tmp_path / "d.jsonl", lines) if lines else tmp_path / "d.jsonl"
    if not lines:
        path.write_bytes(b"")
    with pytest.raises(DataError) as info:
        validate_file(path)
    assert (info.value.code, info.value.line) == (code, line)
    if line is not None:
        assert f"line {line}" in info.value.message


def test_line_too_long(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [CHAT, json.dumps({"text": "x" * 400})])
    with pytest.raises(DataError) as info:
        validate_file(path, max_line_bytes=300)
    assert (info.value.code, info.value.line) == (data.LINE_TOO_LONG, 2)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        validate_file(tmp_path / "nope.jsonl")
    assert info.value.code == data.FILE_NOT_FOUND

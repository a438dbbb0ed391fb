"""Training-data validation: JSONL in four shapes, checked line by line before any model is loaded.

Standard library only (the service validates uploads and job files with this same code, without torch).

Shapes, detected per line (a file may not mix them):
  chat        {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  completion  {"prompt": str, "completion": str}
  text        {"text": str}
  alpaca      {"instruction": str, "input": str (optional), "output": str}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import JobConfig

FORMATS = ("chat", "completion", "text", "alpaca")
ROLES = ("system", "user", "assistant", "tool")

MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024
MAX_ROWS = 1_000_000

# Distinct, machine-readable codes: clients switch on them.
EMPTY_FILE = "empty_file"
INVALID_JSON = "invalid_json"
INVALID_ENCODING = "invalid_encoding"
UNKNOWN_FORMAT = "unknown_format"
MIXED_FORMATS = "mixed_formats"
INVALID_FIELD = "invalid_field"
NO_ASSISTANT_TURN = "no_assistant_turn"
LINE_TOO_LONG = "line_too_long"
FILE_TOO_LARGE = "file_too_large"
TOO_MANY_ROWS = "too_many_rows"
FILE_NOT_FOUND = "file_not_found"
CODES = (
    EMPTY_FILE,
    INVALID_JSON,
    INVALID_ENCODING,
    UNKNOWN_FORMAT,
    MIXED_FORMATS,
    INVALID_FIELD,
    NO_ASSISTANT_TURN,
    LINE_TOO_LONG,
    FILE_TOO_LARGE,
    TOO_MANY_ROWS,
    FILE_NOT_FOUND,
)
# Found only once the data is tokenised (the trainer's setup, the dry run): codes of `invalid_data` failures.
NO_TRAINABLE_TOKENS = "no_trainable_tokens"
TOO_FEW_EXAMPLES = "too_few_examples"
PLAN_CODES = (NO_TRAINABLE_TOKENS, TOO_FEW_EXAMPLES)


class DataError(ValueError):
    """A training file that cannot be used. `line` is 1-based (None for whole-file problems)."""

    def __init__(self, code: str, message: str, *, line: int | None = None, path: str | None = None) -> None:
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}")
        self.code = code
        self.message = f"{where}{message}"
        self.line = line
        self.path = path

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "line": self.line}


@dataclass
class DatasetSummary:
    format: str
    num_examples: int
    num_bytes: int
    # Rough size in characters of all text, a cheap proxy for tokens before a tokenizer is loaded.
    num_characters: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "num_examples": self.num_examples,
            "num_bytes": self.num_bytes,
            "num_characters": self.num_characters,
            "warnings": list(self.warnings),
        }


def detect_format(obj: Any, line: int) -> str:
    """Return the shape of one parsed line, or raise DataError naming what is wrong with it."""
    if not isinstance(obj, dict):
        raise DataError(UNKNOWN_FORMAT, f"expected a JSON object, got {type(obj).__name__}", line=line)
    if "messages" in obj:
        return "chat"
    if "prompt" in obj and "completion" in obj:
        return "completion"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "text" in obj:
        return "text"
    keys = ", ".join(sorted(obj)) or "none"
    raise DataError(
        UNKNOWN_FORMAT,
        f"unknown record shape (keys: {keys}); expected one of "
        '{"messages": [...]}, {"prompt", "completion"}, {"text"}, {"instruction", "input", "output"}',
        line=line,
    )


def check_record(obj: dict[str, Any], fmt: str, line: int) -> int:
    """Validate one record of a known shape; return its number of characters."""

    def need_str(key: str, value: Any, *, allow_empty: bool = False) -> int:
        if not isinstance(value, str):
            raise DataError(INVALID_FIELD, f"{key!r} must be a string, got {type(value).__name__}", line=line)
        if not allow_empty and not value.strip():
            raise DataError(INVALID_FIELD, f"{key!r} must not be empty", line=line)
        return len(value)

    if fmt == "chat":
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(INVALID_FIELD, "'messages' must be a non-empty list", line=line)
        chars = 0
        has_assistant = False
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise DataError(INVALID_FIELD, f"messages[{i}] must be an object", line=line)
            role = msg.get("role")
            if role not in ROLES:
                raise DataError(
                    INVALID_FIELD,
                    f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                    line=line,
                )
            content = msg.get("content")
            if not isinstance(content, str):
                raise DataError(INVALID_FIELD, f"messages[{i}].content must be a string", line=line)
            chars += len(content)
            if role == "assistant" and content.strip():
                has_assistant = True
        if not has_assistant:
            raise DataError(NO_ASSISTANT_TURN, "conversation has no non-empty assistant turn", line=line)
        return chars
    if fmt == "completion":
        return need_str("prompt", obj["prompt"], allow_empty=True) + need_str("completion", obj["completion"])
    if fmt == "alpaca":
        chars = need_str("instruction", obj["instruction"]) + need_str("output", obj["output"])
        if obj.get("input") is not None:
            chars += need_str("input", obj["input"], allow_empty=True)
        return chars
    return need_str("text", obj["text"])


def iter_records(
    path: str | Path,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, record) for every non-blank line; raise DataError at the first bad line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(raw) > max_line_bytes:
                raise DataError(
                    LINE_TOO_LONG,
                    f"line is {len(raw)} bytes, over the limit of {max_line_bytes}",
                    line=lineno,
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    INVALID_ENCODING, f"not valid UTF-8 (byte {exc.start} of the line)", line=lineno
                ) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(
                    INVALID_JSON, f"invalid JSON: {exc.msg} (column {exc.colno})", line=lineno
                ) from None
            yield lineno, obj


def validate_file(
    path: str | Path,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_rows: int = MAX_ROWS,
) -> DatasetSummary:
    """Check a whole JSONL file and summarise it. Raises DataError (with a line number) at the first error."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DataError(FILE_NOT_FOUND, f"file not found: {p.name}", path=str(p)) from None
    if not p.is_file():
        raise DataError(FILE_NOT_FOUND, f"not a regular file: {p.name}", path=str(p))
    if size > max_bytes:
        raise DataError(FILE_TOO_LARGE, f"file is {size} bytes, over the limit of {max_bytes}")
    fmt: str | None = None
    first_line = 0
    count = 0
    chars = 0
    for lineno, obj in iter_records(p, max_line_bytes=max_line_bytes):
        this = detect_format(obj, lineno)
        if fmt is None:
            fmt, first_line = this, lineno
        elif this != fmt:
            raise DataError(
                MIXED_FORMATS,
                f"record is in {this!r} format but line {first_line} set the file's format to {fmt!r}",
                line=lineno,
            )
        chars += check_record(obj, this, lineno)
        count += 1
        if count > max_rows:
            raise DataError(TOO_MANY_ROWS, f"more than {max_rows} examples", line=lineno)
    if fmt is None:
        raise DataError(EMPTY_FILE, "file has no examples (it is empty or blank)")
    return DatasetSummary(format=fmt, num_examples=count, num_bytes=size, num_characters=chars)


def summarise_job_files(cfg: JobConfig) -> tuple[DatasetSummary, DatasetSummary | None]:
    """Validate a job's training and validation files (the trainer, before any heavy import, and the dry
    run). A bad file becomes an `invalid_data` TrainerError naming the file field and the line."""
    from .errors import EXIT_USER_ERROR, INVALID_DATA, TrainerError

    summaries: list[DatasetSummary | None] = []
    for field_name, path in (("training_file", cfg.training_file), ("validation_file", cfg.validation_file)):
        if path is None:
            summaries.append(None)
            continue
        try:
            summaries.append(validate_file(path))
        except DataError as exc:
            raise TrainerError(
                INVALID_DATA,
                f"{field_name} {Path(path).name}: {exc.message}",
                EXIT_USER_ERROR,
                extra={"data_code": exc.code, "line": exc.line, "file": field_name},
            ) from None
    train, valid = summaries
    assert train is not None
    return train, valid

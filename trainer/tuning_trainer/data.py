"""Training-data validation: JSONL in six shapes, checked line by line before any model is loaded.

Standard library only (the service validates uploads and job files with this same code, without torch).

Shapes, detected per line (a file may not mix them). Supervised (method "sft"):
  chat             {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  completion       {"prompt": str, "completion": str}
  text             {"text": str}
  alpaca           {"instruction": str, "input": str (optional), "output": str}
Preference pairs (methods "dpo", "orpo", "simpo"):
  preference       OpenAI's: {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant",
                   "content": str}], "non_preferred_output": [...]}
  chosen_rejected  {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from .config import JobConfig

SftFormat = Literal["chat", "completion", "text", "alpaca"]
PreferenceFormat = Literal["preference", "chosen_rejected"]
DataFormat = Literal[SftFormat, PreferenceFormat]
SFT_FORMATS: tuple[str, ...] = get_args(SftFormat)
PREFERENCE_FORMATS: tuple[str, ...] = get_args(PreferenceFormat)
FORMATS = SFT_FORMATS + PREFERENCE_FORMATS
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
# Preference pairs: one code per problem.
MISSING_PROMPT = "missing_prompt"
MISSING_CHOSEN = "missing_chosen"
MISSING_REJECTED = "missing_rejected"
IDENTICAL_OUTPUTS = "identical_outputs"
INVALID_OUTPUT_ROLE = "invalid_output_role"
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
    MISSING_PROMPT,
    MISSING_CHOSEN,
    MISSING_REJECTED,
    IDENTICAL_OUTPUTS,
    INVALID_OUTPUT_ROLE,
)
# Found only once the data is tokenised (the trainer's setup, the dry run): codes of `invalid_data` failures.
NO_TRAINABLE_TOKENS = "no_trainable_tokens"
TOO_FEW_EXAMPLES = "too_few_examples"
# A file whose format does not suit the job's method (pairs for sft, or single examples for a preference
# method): found on create and by the trainer.
FORMAT_MISMATCH = "format_mismatch"
PLAN_CODES = (NO_TRAINABLE_TOKENS, TOO_FEW_EXAMPLES, FORMAT_MISMATCH)


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
    # Preference pairs before "prompt"/"completion": a pair always has a prompt, so its own keys decide.
    if "preferred_output" in obj or "non_preferred_output" in obj:
        return "preference"
    if "chosen" in obj or "rejected" in obj:
        return "chosen_rejected"
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
        '{"messages": [...]}, {"prompt", "completion"}, {"text"}, {"instruction", "input", "output"}, '
        '{"input", "preferred_output", "non_preferred_output"}, {"prompt", "chosen", "rejected"}',
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

    if fmt in PREFERENCE_FORMATS:
        return _check_pair(obj, fmt, line)
    if fmt == "chat":
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(INVALID_FIELD, "'messages' must be a non-empty list", line=line)
        chars = _check_messages(messages, "messages", line)
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
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


# ---- preference pairs -------------------------------------------------------------------------------------

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Pair:
    """A preference pair as the trainer encodes it: a prompt and two answers, each text or messages."""

    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages

    @property
    def conversational(self) -> bool:
        """Rendered with the chat template (any part is messages) rather than as raw text."""
        return any(isinstance(part, list) for part in (self.prompt, self.chosen, self.rejected))

    def as_messages(self) -> tuple[Messages, Messages, Messages]:
        """The three parts as messages: a text prompt is a user turn, a text answer an assistant turn."""

        def msgs(part: str | Messages, role: str) -> Messages:
            return [{"role": role, "content": part}] if isinstance(part, str) else part

        return msgs(self.prompt, "user"), msgs(self.chosen, "assistant"), msgs(self.rejected, "assistant")


def pair_of(obj: dict[str, Any], fmt: str) -> Pair:
    """The pair of a validated record of a preference format."""
    if fmt == "preference":
        return Pair(obj["input"]["messages"], obj["preferred_output"], obj["non_preferred_output"])
    return Pair(obj["prompt"], obj["chosen"], obj["rejected"])


def _check_messages(messages: list[Any], what: str, line: int, *, roles: tuple[str, ...] = ROLES) -> int:
    """Characters of a well-formed message list (each an object with a known role, one of `roles`, and a
    string content)."""
    chars = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise DataError(INVALID_FIELD, f"{what}[{i}] must be an object", line=line)
        role = msg.get("role")
        if role not in ROLES:
            raise DataError(
                INVALID_FIELD, f"{what}[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", line=line
            )
        if role not in roles:
            raise DataError(
                INVALID_OUTPUT_ROLE,
                f"{what}[{i}].role must be assistant (an answer's turns are the model's), got {role!r}",
                line=line,
            )
        content = msg.get("content")
        if not isinstance(content, str):
            raise DataError(INVALID_FIELD, f"{what}[{i}].content must be a string", line=line)
        chars += len(content)
    return chars


def _says_something(messages: list[dict[str, str]]) -> bool:
    return any(m["content"].strip() for m in messages)


def _answer_text(value: Any, key: str, empty_code: str, line: int) -> str:
    """An answer (a string or a list of assistant messages), checked, as the text it says."""
    if value is None or value == "" or value == []:
        raise DataError(empty_code, f"{key!r} is missing or empty", line=line)
    if isinstance(value, str):
        if not value.strip():
            raise DataError(empty_code, f"{key!r} is blank", line=line)
        return value
    if not isinstance(value, list):
        raise DataError(
            INVALID_FIELD,
            f"{key!r} must be a string or a list of messages, got {type(value).__name__}",
            line=line,
        )
    _check_messages(value, key, line, roles=("assistant",))
    if not _says_something(value):
        raise DataError(empty_code, f"{key!r} has no non-empty assistant turn", line=line)
    return "\n".join(m["content"] for m in value)


def _check_pair(obj: dict[str, Any], fmt: str, line: int) -> int:
    if fmt == "preference":
        chosen_key, rejected_key, prompt_key = "preferred_output", "non_preferred_output", "input.messages"
        source = obj.get("input")
        if source is not None and not isinstance(source, dict):
            raise DataError(INVALID_FIELD, "'input' must be an object with 'messages'", line=line)
        prompt = source.get("messages") if isinstance(source, dict) else None
        if isinstance(prompt, str) and prompt:
            raise DataError(INVALID_FIELD, "'input.messages' must be a list of messages", line=line)
    else:
        chosen_key, rejected_key, prompt_key = "chosen", "rejected", "prompt"
        prompt = obj.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise DataError(
            MISSING_PROMPT, f"{prompt_key!r} is missing or empty: a pair needs a prompt", line=line
        )
    if isinstance(prompt, str):
        chars = len(prompt)
        if not prompt.strip():
            raise DataError(MISSING_PROMPT, f"{prompt_key!r} is blank", line=line)
    elif isinstance(prompt, list):
        chars = _check_messages(prompt, prompt_key, line)
        if not _says_something(prompt):
            raise DataError(MISSING_PROMPT, f"{prompt_key!r} has no non-empty message", line=line)
    else:
        raise DataError(
            INVALID_FIELD,
            f"{prompt_key!r} must be a string or a list of messages, got {type(prompt).__name__}",
            line=line,
        )
    chosen = _answer_text(obj.get(chosen_key), chosen_key, MISSING_CHOSEN, line)
    rejected = _answer_text(obj.get(rejected_key), rejected_key, MISSING_REJECTED, line)
    if chosen.strip() == rejected.strip():
        raise DataError(
            IDENTICAL_OUTPUTS,
            f"{chosen_key!r} and {rejected_key!r} are the same: a pair must prefer one answer to another",
            line=line,
        )
    return chars + len(chosen) + len(rejected)


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


def method_mismatch(fmt: str, method: str) -> str | None:
    """Why a file of format `fmt` cannot train `method`, or None when it can."""
    preference_method = method in ("dpo", "orpo", "simpo")
    if preference_method and fmt not in PREFERENCE_FORMATS:
        return (
            f"method {method!r} trains on preference pairs ({' or '.join(PREFERENCE_FORMATS)} records), "
            f"but the file is in {fmt!r} format"
        )
    if not preference_method and fmt in PREFERENCE_FORMATS:
        return (
            f"the file holds preference pairs ({fmt!r} format): train them with method 'dpo', 'orpo' or "
            f"'simpo', not {method!r}"
        )
    return None


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
            summary = validate_file(path)
            mismatch = method_mismatch(summary.format, cfg.method)
            if mismatch is not None:
                raise DataError(FORMAT_MISMATCH, mismatch)
            summaries.append(summary)
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

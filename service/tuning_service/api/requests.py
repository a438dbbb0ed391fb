"""Validation of request bodies and query parameters, before anything is queued.

Shape problems (not JSON, wrong types, missing fields) are 400; well-formed but unusable values
(hyperparameters, file contents, limits) are 422. Every error names the field in `param`; data-file errors
also carry the 1-based `line`. The hyperparameter and data rules are the trainer's own
(`tuning_trainer.config` / `tuning_trainer.data`, both standard library only), so the service accepts exactly
what the trainer will run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from tuning_trainer.config import METHODS, ConfigError, parse_hyperparameters
from tuning_trainer.data import DataError, validate_file

from ..errors import APIError, job_not_found
from ..files.paths import resolve_data_path
from ..settings import Settings
from ..webhooks.policy import UrlPolicy, check_events
from .openapi import IDEMPOTENCY_KEY_PATTERN

CREATE_FIELDS = (
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "seed",
    "metadata",
    "webhook_url",
    "webhook_events",
    "resume_on_restart",
)
STATUSES = (
    "validating",
    "queued",
    "running",
    "cancelling",
    "pausing",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
)
# `file-<24 hex>`: a file uploaded through /v1/files.upload (or /v1/files), checked by the manager.
_FILE_ID_RE = re.compile(r"^file-[0-9a-f]{24}$")

MAX_MODEL_CHARS = 256
MAX_SUFFIX_CHARS = 64
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_SEED = 2**32 - 1

# A hub id ("org/name") or a folder name under TUNING_MODELS_DIR: no whitespace or backslashes, not absolute,
# no empty or ".." segments -- never a path that climbs out of the models dir.
_MODEL_RE = re.compile(r"^[^\s/\\]+(/[^\s/\\]+)*$")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
_IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


def parse_json_body(body: bytes) -> Any:
    if not body.strip():
        raise APIError(400, "invalid_json", "Request body is empty: send a JSON object")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise APIError(400, "invalid_json", "Request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise APIError(
            400,
            "invalid_json",
            f"Request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        ) from None


def _bad(param: str, message: str, *, status: int = 400, code: str = "invalid_request") -> APIError:
    return APIError(status, code, message, param=param)


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(name, f"{name} must be a string, got {type(value).__name__}")
    return value


def validate_model(value: Any) -> str:
    if value is None or value == "":
        raise _bad("model", "model is required: a model folder name under the models dir or a hub id")
    if not isinstance(value, str):
        raise _bad("model", f"model must be a string, got {type(value).__name__}")
    if len(value) > MAX_MODEL_CHARS:
        raise _bad(
            "model", f"model is longer than {MAX_MODEL_CHARS} characters", status=422, code="invalid_value"
        )
    if not _MODEL_RE.match(value) or {".", ".."} & set(value.split("/")) or not value.isprintable():
        raise _bad(
            "model",
            "model must be a model folder name or a hub id without spaces, backslashes, '.'/'..' parts or a "
            "leading '/', e.g. 'tiny-llama' or 'meta-llama/Llama-2-7b-hf'",
            status=422,
            code="invalid_value",
        )
    return value


def validate_hyperparameters(value: Any) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _bad("hyperparameters", f"hyperparameters must be an object, got {type(value).__name__}")
    try:
        hp = parse_hyperparameters(value)
    except ConfigError as exc:
        raise APIError(
            422, "invalid_hyperparameter", exc.message, param=exc.param or "hyperparameters"
        ) from None
    # The requested values with the trainer's defaults filled in ("auto" stays until the trainer resolves it).
    return dataclasses.asdict(hp)


def validate_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("metadata", f"metadata must be an object of strings, got {type(value).__name__}")
    if len(value) > MAX_METADATA_PAIRS:
        raise _bad(
            "metadata",
            f"metadata has {len(value)} keys, at most {MAX_METADATA_PAIRS} are allowed",
            status=422,
            code="invalid_value",
        )
    for k, v in value.items():
        if len(k) > MAX_METADATA_KEY_CHARS:
            raise _bad(
                f"metadata.{k[:20]}",
                f"metadata keys must be at most {MAX_METADATA_KEY_CHARS} characters",
                status=422,
                code="invalid_value",
            )
        if not isinstance(v, str):
            raise _bad(f"metadata.{k}", f"metadata values must be strings, got {type(v).__name__} for {k!r}")
        if len(v) > MAX_METADATA_VALUE_CHARS:
            raise _bad(
                f"metadata.{k}",
                f"metadata values must be at most {MAX_METADATA_VALUE_CHARS} characters",
                status=422,
                code="invalid_value",
            )
    return dict(value)


def validate_create_shape(body: Any, settings: Settings) -> tuple[dict[str, Any], dict[str, Path]]:
    """Check the create body's fields (no file I/O). Returns (normalised request, resolved absolute paths)."""
    if not isinstance(body, dict):
        raise APIError(
            400, "invalid_request", f"Request body must be a JSON object, got {type(body).__name__}"
        )
    unknown = sorted(set(body) - set(CREATE_FIELDS))
    if unknown:
        raise _bad(unknown[0], f"Unknown field {unknown[0]!r}; allowed: {', '.join(CREATE_FIELDS)}")

    model = validate_model(body.get("model"))
    if body.get("training_file") in (None, ""):
        raise _bad("training_file", "training_file is required: a JSONL path relative to the files root")
    # A file id is kept as given (the manager checks it is the caller's and valid); a path is resolved here.
    paths: dict[str, Path] = {}
    training_file = body["training_file"]
    if not (isinstance(training_file, str) and _FILE_ID_RE.match(training_file)):
        training_file, paths["training_file"] = resolve_data_path(
            training_file, settings.files_root, param="training_file"
        )
    validation_file: str | None = None
    if body.get("validation_file") not in (None, ""):
        validation_file = body["validation_file"]
        if not (isinstance(validation_file, str) and _FILE_ID_RE.match(validation_file)):
            validation_file, paths["validation_file"] = resolve_data_path(
                validation_file, settings.files_root, param="validation_file"
            )

    method = _opt_str(body, "method") or "qlora"
    if method not in METHODS:
        raise _bad(
            "method",
            f"method must be one of {', '.join(METHODS)}, got {method!r}",
            status=422,
            code="invalid_value",
        )

    suffix = _opt_str(body, "suffix")
    if suffix is not None and (len(suffix) > MAX_SUFFIX_CHARS or not _SUFFIX_RE.match(suffix)):
        raise _bad(
            "suffix",
            f"suffix must be 1-{MAX_SUFFIX_CHARS} characters of letters, digits, '.', '_', '-'",
            status=422,
            code="invalid_value",
        )

    seed = body.get("seed")
    if seed is None:
        seed = 42
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)  # 7.0 is the integer 7 in JSON (and in JSON Schema)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _bad("seed", f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise _bad("seed", f"seed must be in [0, {MAX_SEED}], got {seed}", status=422, code="invalid_value")

    request: dict[str, Any] = {
        "model": model,
        "training_file": training_file,
        "validation_file": validation_file,
        "hyperparameters": validate_hyperparameters(body.get("hyperparameters")),
        "method": method,
        "suffix": suffix,
        "seed": seed,
        "metadata": validate_metadata(body.get("metadata")),
    }
    # Webhooks (webhooks.py): kept out of the normalised body when absent, so older bodies hash the same.
    if body.get("webhook_url") is not None:
        policy = UrlPolicy(settings.webhook_allow_networks)
        request["webhook_url"] = policy.check_shape(body["webhook_url"])
        events = check_events(body.get("webhook_events"))
        if events is not None:
            request["webhook_events"] = events
    elif body.get("webhook_events") is not None:
        raise _bad("webhook_events", "webhook_events needs a webhook_url", status=422, code="invalid_value")
    # Resume from the newest checkpoint if the trainer dies with the service (recovery.py). Kept out of the
    # normalised body unless true, so older bodies hash the same.
    resume_on_restart = body.get("resume_on_restart")
    if resume_on_restart is not None and not isinstance(resume_on_restart, bool):
        kind = type(resume_on_restart).__name__
        raise _bad("resume_on_restart", f"resume_on_restart must be true or false, got {kind}")
    if resume_on_restart:
        request["resume_on_restart"] = True
    return request, paths


def _check_file(path: Path, param: str, shown: str, settings: Settings) -> dict[str, Any]:
    try:
        summary = validate_file(
            path,
            max_bytes=settings.max_file_bytes,
            max_line_bytes=settings.max_line_bytes,
            max_rows=settings.max_rows,
        )
    except DataError as exc:
        message = exc.message
        if exc.code == "file_not_found":
            # DataError names only the file's base name; say what the client asked for, relative to the root.
            message = f"{shown!r} was not found under the files root (or is not a regular file)"
        raise APIError(422, exc.code, f"{param}: {message}", param=param, extra={"line": exc.line}) from None
    except OSError as exc:  # unreadable (permissions): never echo the server path
        raise APIError(
            422,
            "file_unreadable",
            f"{param}: cannot read {shown!r} ({exc.strerror})",
            param=param,
            extra={"line": None},
        ) from None
    return summary.to_dict()


async def validate_create(body: Any, settings: Settings) -> dict[str, Any]:
    """The whole create check: field shapes, then the data files' contents (in a thread: files can be big)."""
    request, paths = validate_create_shape(body, settings)
    if "webhook_url" in request:  # every address the host resolves to must be allowed too
        await UrlPolicy(settings.webhook_allow_networks).check(request["webhook_url"])
    for param, path in paths.items():
        await asyncio.to_thread(_check_file, path, param, request[param], settings)
    return request


def validate_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_IDEMPOTENCY_KEY_CHARS or not _IDEMPOTENCY_KEY_RE.match(value):
        raise APIError(
            400,
            "invalid_request",
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters",
            param="Idempotency-Key",
        )
    return value


def validate_job_id(job_id: str) -> str:
    # An id that cannot exist gets the same 404 as an unknown one (nothing to learn from a different error).
    if not _JOB_ID_RE.match(job_id):
        raise job_not_found(job_id[:128])
    return job_id


def check_query(params: Any, allowed: tuple[str, ...] = ()) -> None:
    """Unknown query parameters are refused, like unknown body fields: a typo (`?stauts=failed`) must not
    silently return something else."""
    for name in params:
        if name not in allowed:
            hint = f"; allowed: {', '.join(allowed)}" if allowed else "; this route takes none"
            raise _bad(name[:64], f"Unknown query parameter {name[:64]!r}{hint}")


def query_int(params: Any, name: str, *, default: int, minimum: int, maximum: int) -> int:
    raw = params.get(name)
    if raw is None:  # absent; an empty value is not an integer (400 below)
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad(name, f"{name} must be an integer, got {raw[:32]!r}") from None
    if not minimum <= value <= maximum:
        raise _bad(name, f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def query_status(params: Any) -> str | None:
    raw = params.get("status")
    if raw is None:
        return None
    if raw not in STATUSES:
        raise _bad("status", f"status must be one of {', '.join(STATUSES)}, got {raw[:32]!r}")
    return str(raw)


def query_bool(params: Any, name: str) -> bool:
    value = params.get(name)
    if value is None:
        return False
    raw = value.strip().lower()
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise _bad(name, f"{name} must be true or false, got {raw[:16]!r}")

"""Admission of a new job: what a create body's schema cannot say, checked against this server before the
job is stored.

- Its data paths lie inside the files root (files/paths.py: no '..', symlinks resolved): 400 invalid_path.
- The files it names exist: an upload of the caller's, or a regular file under the root (404
  file_not_found, like any id that is not there); an upload passed validation (422 file_invalid).
- A path's file holds valid training data, by the trainer's own rules (422 with the data codes and `line`),
  in a format the method trains on: pairs for dpo/orpo/simpo, single examples for sft (422 format_mismatch).
- (Its GPUs are the executor's to judge, before all this: executors/, `admit_gpus`.)
- A webhook URL may be reached by this server's policy (403 webhook_url_not_allowed) and can be signed: the
  key has a secret (409 webhook_secret_missing, a state of the key that `keys set-webhook` changes).
The create body itself was validated once, at the route (schema/jobs.py); this returns it with its paths in
their normal form, and that frozen request is what the job is made of.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

from tuning_trainer.data import FORMAT_MISMATCH, DataError, method_mismatch, validate_file

from ..errors import APIError
from ..files.paths import resolve_data_path
from ..files.store import Files, is_file_id
from ..schema.jobs import CreateTuningRequest
from ..settings import Settings
from ..storage.store import Store
from ..webhooks.policy import UrlPolicy


async def admit(
    request: CreateTuningRequest, *, owner: str, settings: Settings, files: Files, store: Store
) -> CreateTuningRequest:
    paths: dict[str, tuple[str, Path]] = {}
    for param in ("training_file", "validation_file"):
        value = getattr(request, param)
        if value and not is_file_id(value):
            paths[param] = resolve_data_path(value, settings.files_root, param=param)
    if request.webhook_url is not None:
        # Every address the host resolves to must be allowed too.
        await UrlPolicy(settings.webhook_allow_networks).check(request.webhook_url)
        if not await store.key_has_webhook_secret(owner):
            raise APIError(
                409,
                "webhook_secret_missing",
                f"This API key ({owner}) has no webhook signing secret yet: run 'python -m tuning_service "
                f"keys set-webhook {owner}' on the server (it prints the secret once), then retry",
                param="webhook_url",
            )
    formats: dict[str, str] = {}
    for param in ("training_file", "validation_file"):
        value = getattr(request, param)
        if is_file_id(value):
            _, formats[param] = await files.for_job(value, owner, param)
    for param, (shown, path) in paths.items():
        formats[param] = await asyncio.to_thread(_check_file, path, param, shown, settings)
    for param in ("training_file", "validation_file"):  # in this order: the training file's problem first
        mismatch = method_mismatch(formats[param], request.training_method) if param in formats else None
        if mismatch is not None:
            raise APIError(422, FORMAT_MISMATCH, f"{param}: {mismatch}", param=param, extra={"line": None})
    normal: dict[str, str | None] = {param: shown for param, (shown, _) in paths.items()}
    if request.validation_file == "":
        normal["validation_file"] = None
    return request.model_copy(update=normal) if normal else request


# A path that cannot name a file (a name over the file system's limit, a file where a folder should be) is
# not there, like a missing one.
_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})


def _not_found(param: str, shown: str) -> APIError:
    # DataError names only the file's base name; say what the client asked for, relative to the root.
    message = f"{param}: {shown!r} was not found under the files root (or is not a regular file)"
    return APIError(404, "file_not_found", message, param=param, extra={"line": None})


def _check_file(path: Path, param: str, shown: str, settings: Settings) -> str:
    """The file's data format, or the APIError that says what is wrong with it."""
    try:
        return validate_file(
            path,
            max_bytes=settings.max_file_bytes,
            max_line_bytes=settings.max_line_bytes,
            max_rows=settings.max_rows,
        ).format
    except DataError as exc:
        if exc.code == "file_not_found":
            raise _not_found(param, shown) from None
        message = f"{param}: {exc.message}"
        raise APIError(422, exc.code, message, param=param, extra={"line": exc.line}) from None
    except OSError as exc:  # never echo the server path
        if exc.errno in _NOT_THERE:
            raise _not_found(param, shown) from None
        raise APIError(
            422,
            "file_unreadable",
            f"{param}: cannot read {shown!r} ({exc.strerror})",
            param=param,
            extra={"line": None},
        ) from None

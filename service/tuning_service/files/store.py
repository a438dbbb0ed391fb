"""The file store: uploaded JSONL training files, by id, per API key.

The bytes live in `<data_dir>/files/<id>`; the row (name, size, validation result) in the `files` table.
A file is validated once, on upload, with the trainer's own rules (`tuning_trainer.data.validate_file`,
standard library only): `processed` (format, number of examples) or `error` (code, message, 1-based line).
Jobs name a file by id wherever they accept a path; the supervisor gives the trainer the stored file's path.

Uploads are streamed: Starlette's multipart parser spools the part to a temporary file on disk past 1 MiB,
and the bytes are then copied into place in a thread, so a large upload is never held in memory.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message, Receive

from tuning_trainer.data import DataError, validate_file
from tuning_trainer.schema import VALUE, Problem

from ..errors import APIError, problem_error
from ..schema.files import PURPOSES, FileUpload
from ..schema.jobs import FILE_ID_PATTERN
from ..settings import Settings
from ..storage.store import Store

FILE_ID_RE = re.compile(FILE_ID_PATTERN)
UPLOAD_FIELDS = frozenset(FileUpload.model_fields)
MAX_FILENAME_CHARS = 255
# Room for the multipart envelope (boundaries, part headers, the `purpose` field) on top of the file itself.
MULTIPART_SLACK_BYTES = 64 * 1024
_CHUNK = 1024 * 1024


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def is_file_id(value: object) -> bool:
    return isinstance(value, str) and bool(FILE_ID_RE.match(value))


def file_not_found(file_id: str, param: str = "id") -> APIError:
    # The same body for an unknown id and another key's file: nothing leaks between tenants.
    return APIError(404, "file_not_found", f"No file with id {file_id[:64]!r}", param=param)


def file_too_large(limit: int) -> APIError:
    return APIError(
        413,
        "file_too_large",
        f"The file is over the limit of {limit} bytes (TUNING_MAX_FILE_BYTES)",
        param="file",
        headers={"Connection": "close"},
    )


def public_file(row: dict[str, Any]) -> dict[str, Any]:
    err = row["error"]
    return {
        "id": row["id"],
        "object": "file",
        "bytes": int(row["bytes"]),
        "created_at": int(row["created_at"]),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": None if err is None else err.get("message"),
        "format": row["format"],
        "num_examples": row["num_examples"],
        "error": err,
    }


def _clean_filename(raw: str | None) -> str:
    # Only the base name, printable, bounded: it is shown back and sent in Content-Disposition.
    name = os.path.basename((raw or "").replace("\\", "/")).strip()
    name = "".join(c for c in name if c.isprintable() and c not in '"')[:MAX_FILENAME_CHARS]
    return name or "upload.jsonl"


class Files:
    """File operations for the HTTP layer (reached through `JobManager.files`)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    @property
    def root(self) -> Path:
        return self.settings.data_dir / "files"

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    async def owned(self, file_id: str, owner: str, *, param: str = "id") -> dict[str, Any]:
        row = await self.store.get_file(file_id) if is_file_id(file_id) else None
        if row is None or row["owner"] != owner:
            raise file_not_found(file_id, param)
        return row

    # ---- upload --------------------------------------------------------------------------------------

    async def upload(self, request: Request, owner: str) -> dict[str, Any]:
        """Parse a multipart upload (`file`, `purpose`), store and validate it; returns the public file."""
        limit = self.settings.max_file_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + MULTIPART_SLACK_BYTES:
            raise file_too_large(limit)
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise APIError(
                400,
                "invalid_request",
                "Upload a file as multipart/form-data with a `file` part and `purpose=fine-tune`",
                param="file",
            )
        counted = Request(request.scope, _counting_receive(request.receive, limit + MULTIPART_SLACK_BYTES))
        try:
            form = await counted.form(max_files=1, max_fields=8)
        except APIError:
            raise
        except Exception as exc:  # malformed multipart (bad boundary, too many parts, ...)
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise APIError(
                400, "invalid_request", f"Malformed multipart body: {detail}", param="file"
            ) from None
        try:
            # Only `file` and `purpose`, like unknown JSON body fields: a typo must not be silently ignored.
            unknown = sorted(set(form.keys()) - UPLOAD_FIELDS)
            if unknown:
                raise APIError(
                    400,
                    "invalid_request",
                    f"Unknown multipart field {unknown[0][:64]!r}; an upload has `file` and `purpose` only",
                    param=unknown[0][:64],
                )
            purpose = form.get("purpose")
            if not isinstance(purpose, str) or not purpose:
                raise APIError(
                    400, "invalid_request", "purpose is required: send purpose=fine-tune", param="purpose"
                )
            if purpose not in PURPOSES:
                message = (
                    f"purpose must be one of {', '.join(PURPOSES)}, got {purpose[:32]!r}: this service "
                    "stores fine-tuning data only"
                )
                raise problem_error(Problem(VALUE, "purpose", message))
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise APIError(
                    400,
                    "invalid_request",
                    "No `file` part in the upload: send the JSONL as `file`",
                    param="file",
                )
            file_id = new_file_id()
            size = await asyncio.to_thread(self._store_bytes, upload, file_id, limit)
            return await self._validate_and_record(
                file_id, owner=owner, filename=_clean_filename(upload.filename), purpose=purpose, size=size
            )
        finally:
            await form.close()

    def _store_bytes(self, upload: UploadFile, file_id: str, limit: int) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(file_id)
        tmp = final.with_name(final.name + ".part")
        size = 0
        try:
            upload.file.seek(0)
            with open(tmp, "wb") as out:
                while chunk := upload.file.read(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise file_too_large(limit)
                    out.write(chunk)
            tmp.rename(final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    async def _validate_and_record(
        self, file_id: str, *, owner: str, filename: str, purpose: str, size: int
    ) -> dict[str, Any]:
        path = self.path(file_id)
        row: dict[str, Any] = {
            "id": file_id,
            "owner": owner,
            "filename": filename,
            "purpose": purpose,
            "bytes": size,
            "status": "processed",
            "format": None,
            "num_examples": None,
            "error": None,
            "created_at": time.time(),
        }
        try:
            summary = await asyncio.to_thread(validate_file, path, max_bytes=self.settings.max_file_bytes)
            row["format"], row["num_examples"] = summary.format, summary.num_examples
        except DataError as exc:
            row["status"] = "error"
            row["error"] = {"code": exc.code, "message": exc.message, "line": exc.line}
        try:
            stored = await self.store.insert_file(row)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return public_file(stored)

    # ---- reading and deleting ------------------------------------------------------------------------

    async def get(self, file_id: str, owner: str) -> dict[str, Any]:
        return public_file(await self.owned(file_id, owner))

    async def list(
        self, *, owner: str, purpose: str | None, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        rows, has_more = await self.store.list_files(owner=owner, purpose=purpose, after=after, limit=limit)
        return [public_file(r) for r in rows], has_more

    async def content_path(self, file_id: str, owner: str) -> tuple[Path, str]:
        row = await self.owned(file_id, owner)
        path = self.path(file_id)
        if not path.is_file():
            raise file_not_found(file_id)
        return path, str(row["filename"])

    async def delete(self, file_id: str, owner: str) -> dict[str, Any]:
        await self.owned(file_id, owner)
        job_id = await self.store.delete_file(file_id, owner)
        if job_id is not None:
            raise APIError(
                409,
                "file_in_use",
                f"File {file_id} is used by job {job_id}, which has not finished; cancel the job (or wait "
                "for it) before deleting the file",
                param="id",
            )
        self.path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    async def for_job(self, file_id: str, owner: str, param: str) -> tuple[Path, str]:
        """The stored path and data format of a file a job names: 404 if unknown (or another key's), 422 if
        invalid."""
        row = await self.owned(file_id, owner, param=param)
        if row["status"] != "processed":
            err = row["error"] or {}
            raise APIError(
                422,
                "file_invalid",
                f"{param}: file {file_id} failed validation: {err.get('message', 'invalid data')}",
                param=param,
                extra={"line": err.get("line"), "data_code": err.get("code")},
            )
        return self.path(file_id), row["format"]


def _counting_receive(receive: Receive, limit: int) -> Receive:
    """A receive() that refuses a body growing past `limit` (chunked uploads announce no length)."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise file_too_large(limit - MULTIPART_SLACK_BYTES)
        return message

    return counted

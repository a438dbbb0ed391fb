"""`client.files`: upload JSONL data files once, then name them by id in any job."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from .. import _http
from .._objects import FileDeleted, FileObject
from .._pagination import CursorPage
from .._transfer import MultipartFile

__all__ = ["Files"]


def _file_id(file_id: str) -> str:
    if not isinstance(file_id, str) or not file_id:
        raise ValueError(f"Expected a non-empty file id, got {file_id!r}")
    return quote(file_id, safe="")


class Files:
    """Uploaded data files. Reached as ``client.files``."""

    def __init__(self, transport: _http.Transport) -> None:
        self._t = transport

    def upload(
        self,
        file: str | os.PathLike[str] | IO[bytes],
        *,
        purpose: str = "fine-tune",
        filename: str | None = None,
    ) -> FileObject:
        """Upload a JSONL data file. The service validates it at once with the trainer's rules.

        The file is streamed, never read into memory whole, and a retried upload sends it again from the
        start (a file object must be seekable).

        Args:
            file: a path, or a file object opened in binary mode.
            purpose: ``"fine-tune"`` (the only purpose this service stores).
            filename: the name to record (default: the path's name, or the file object's ``name``).

        Returns:
            The `FileObject`: ``status="processed"`` with `format` and `num_examples`, or ``status="error"``
            with ``error.line`` and ``error.message`` saying what is wrong (an invalid file is stored, not
            raised, so that its details can be shown; a job naming it is refused).

        Raises:
            BadRequestError: no file, or a `purpose` other than ``fine-tune`` (``param="purpose"``).
            APIStatusError: 413 ``file_too_large`` over the service's size limit.
            FileNotFoundError: `file` is a path that does not exist.

        Example:
            >>> f = client.files.upload("data/train.jsonl")
            >>> job = client.tunings.create(model="tiny-llama", training_file=f.id)
        """
        if isinstance(file, (str, os.PathLike)):
            path = Path(file)
            with open(path, "rb") as fh:
                return self._send(fh, filename or path.name, purpose)
        if not hasattr(file, "read") or not hasattr(file, "seek"):
            raise TypeError(
                f"file must be a path or a seekable binary file object, got {type(file).__name__}"
            )
        name = filename or os.path.basename(str(getattr(file, "name", "") or "")) or "upload.jsonl"
        return self._send(file, name, purpose)

    def _send(self, fh: IO[bytes], filename: str, purpose: str) -> FileObject:
        body = MultipartFile(fh, filename=filename, fields={"purpose": purpose})
        data = self._t.request("POST", "/v1/files.upload", content=body, content_type=body.content_type)
        return FileObject.from_dict(data)

    def list(
        self, *, purpose: str | None = None, limit: int | None = None, after: str | None = None
    ) -> CursorPage[FileObject]:
        """List this key's files, newest first. Iterating the result walks every page.

        Args:
            purpose: only files of this purpose.
            limit: page size, 1..100 (service default 20).
            after: start after this file id.

        Returns:
            The first page; iterate it for all files, or read ``.data`` for this page.

        Raises:
            BadRequestError: an invalid limit.

        Example:
            >>> [f.filename for f in client.files.list()]
        """

        def fetch(cursor: str | None) -> Mapping[str, Any]:
            params = {"purpose": purpose, "limit": limit, "after": cursor}
            body = self._t.request("GET", "/v1/files.list", params=params)
            return body if isinstance(body, Mapping) else {}

        return CursorPage(fetch(after), parse=FileObject.from_dict, fetch=fetch)

    def get(self, file_id: str) -> FileObject:
        """Fetch a file's metadata and validation result.

        Args:
            file_id: the file's id (``file-...``).

        Returns:
            The `FileObject`.

        Raises:
            NotFoundError: no such file for this key (code ``file_not_found``).

        Example:
            >>> client.files.get("file-5d1c...").num_examples
            120
        """
        return FileObject.from_dict(self._t.request("GET", f"/v1/files.get/{_file_id(file_id)}"))

    def content(self, file_id: str) -> bytes:
        """The file's bytes exactly as uploaded.

        Args:
            file_id: the file's id.

        Returns:
            The raw bytes.

        Raises:
            NotFoundError: no such file.

        Example:
            >>> first_line = client.files.content(f.id).splitlines()[0]
        """
        resp = self._t.request(
            "GET",
            f"/v1/files.content/{_file_id(file_id)}",
            stream=True,
            headers={"Accept": "application/jsonl, */*"},
        )
        try:
            return bytes(resp.read())
        finally:
            resp.release_conn()

    def delete(self, file_id: str) -> FileDeleted:
        """Delete a file.

        Args:
            file_id: the file's id.

        Returns:
            ``FileDeleted(id=..., deleted=True)``.

        Raises:
            ConflictError: a job that has not finished names it (code ``file_in_use``).
            NotFoundError: no such file.

        Example:
            >>> client.files.delete(f.id).deleted
            True
        """
        return FileDeleted.from_dict(self._t.request("DELETE", f"/v1/files.delete/{_file_id(file_id)}"))

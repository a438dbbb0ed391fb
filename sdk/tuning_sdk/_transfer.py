"""Moving bytes: a streamed multipart upload body, and the safe unpacking of a downloaded adapter archive.

The upload is never held in memory: `MultipartFile` is a seekable reader over (envelope head, the file,
envelope tail) with a known length, so urllib3 sends it in blocks with a ``Content-Length``, and a retry
rewinds it.
The download is written to a temporary file first, then unpacked member by member after checking that every
member is a plain file or folder inside the target (no absolute paths, no ``..``, no links or devices).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from ._errors import TuningError

if TYPE_CHECKING:
    import tarfile

__all__ = ["ArchiveError", "MultipartFile", "safe_extract"]


class ArchiveError(TuningError):
    """A downloaded archive is corrupt, truncated, or holds a member that would land outside its folder."""


def _quote(value: str) -> str:
    # RFC 7578: names are sent as-is, with quotes, backslashes and line breaks escaped.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartFile:
    """A ``multipart/form-data`` body with plain `fields` and one file part named `name`, read lazily."""

    def __init__(
        self, fileobj: IO[bytes], *, filename: str, name: str = "file", fields: dict[str, str]
    ) -> None:
        self.boundary = f"tuning-sdk-{os.urandom(16).hex()}"
        head = b""
        for key, value in fields.items():
            head += (
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(key)}"\r\n\r\n'
                f"{value}\r\n"
            ).encode()
        head += (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"; '
            f'filename="{_quote(filename)}"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        self._parts: list[bytes | IO[bytes]] = [head, fileobj, f"\r\n--{self.boundary}--\r\n".encode()]
        self._file = fileobj
        self._start = fileobj.tell()
        fileobj.seek(0, os.SEEK_END)
        self._file_len = fileobj.tell() - self._start
        fileobj.seek(self._start)
        self._length = len(head) + self._file_len + len(self._parts[2])  # type: ignore[arg-type]
        self._index = 0
        self._offset = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def seek(self, pos: int, whence: int = 0) -> int:
        if pos != 0 or whence != 0:
            raise OSError("a multipart body can only be rewound to its start")
        self._index, self._offset = 0, 0
        self._file.seek(self._start)
        return 0

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while self._index < len(self._parts) and (size < 0 or len(out) < size):
            want = -1 if size < 0 else size - len(out)
            part = self._parts[self._index]
            if isinstance(part, bytes):
                chunk = part[self._offset :] if want < 0 else part[self._offset : self._offset + want]
                self._offset += len(chunk)
                done = self._offset >= len(part)
            else:
                chunk = part.read(want)
                done = not chunk or (want < 0)
            out += chunk
            if done:
                self._index, self._offset = self._index + 1, 0
        return bytes(out)


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts or "\\" in name:
        raise ArchiveError(f"refusing archive member {name!r}: it would land outside {target}")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"refusing archive member {name!r}: only plain files and folders are allowed")
    resolved = (target / name).resolve()
    if resolved != target and target not in resolved.parents:
        raise ArchiveError(f"refusing archive member {name!r}: it would land outside {target}")


def safe_extract(archive: Path, dest: Path, *, overwrite: bool = False) -> Path:
    """Unpack the tar.gz `archive` into the folder `dest`, all or nothing.

    Every member is checked before anything is written; the files land in a temporary folder beside `dest`
    that is renamed into place at the end, so `dest` is never left half-written.

    Raises:
        ArchiveError: a corrupt or truncated archive, or an unsafe member.
        FileExistsError: `dest` exists, is not empty and `overwrite` is False.
    """
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} is not empty (pass overwrite=True to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    import tarfile  # here, not at module level: `import tuning_sdk` stays light (B5)

    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        root = staging.resolve()
        try:
            with tarfile.open(archive, mode="r:gz") as tar:
                members = tar.getmembers()  # reads the whole archive: a truncated one fails here
                for m in members:
                    _check_member(m, root)
                kwargs: dict[str, Any] = {}
                if hasattr(tarfile, "data_filter"):
                    kwargs["filter"] = "data"  # the stdlib's own guard too, where this Python has it
                tar.extractall(root, members=members, **kwargs)
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, (FileExistsError, PermissionError)):
                raise
            raise ArchiveError(f"the downloaded archive could not be unpacked: {exc}") from exc
        if not members:
            raise ArchiveError("the downloaded archive is empty")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest

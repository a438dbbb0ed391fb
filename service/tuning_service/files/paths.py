"""Resolve a client-supplied data path (`training_file`, `validation_file`) under the files root.

The client names files relative to `TUNING_FILES_ROOT`. Anything that could reach outside it is refused with
400 `invalid_path`, and the message never contains a server path (nor the client's string for such paths: it
may itself be a probe like "/etc/passwd"). Symlinks are followed before the containment check, so a link
inside the root that points outside is refused too.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from ..errors import APIError

MAX_PATH_CHARS = 1024

# Paths are not URLs: a percent-escape here is a probe ("%2e%2e%2f"), never a real file name we want.
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# "C:\...", "C:/...", "c:relative": drive-qualified Windows paths.
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def _invalid(param: str, why: str) -> APIError:
    return APIError(400, "invalid_path", f"{param} {why}", param=param)


def resolve_data_path(raw: object, files_root: Path, *, param: str) -> tuple[str, Path]:
    """Return (normalised relative path as the client should see it, absolute resolved path).

    Raises APIError 400 `invalid_request` for a non-string and `invalid_path` for anything unsafe.
    """
    if not isinstance(raw, str):
        raise APIError(400, "invalid_request", f"{param} must be a string path", param=param)
    if not raw.strip():
        raise APIError(400, "invalid_request", f"{param} must not be empty", param=param)
    if len(raw) > MAX_PATH_CHARS:
        raise _invalid(param, f"is longer than {MAX_PATH_CHARS} characters")
    if "\x00" in raw or any(ord(c) < 32 for c in raw):
        raise _invalid(param, "must not contain NUL or control characters")
    if _PERCENT_ESCAPE.search(raw):
        raise _invalid(param, "must be a plain file path (percent-escapes are not decoded)")
    if "\\" in raw or _WINDOWS_DRIVE.match(raw):
        raise _invalid(
            param, "must be a POSIX path relative to the files root (no backslashes or drive letters)"
        )
    if raw.startswith("~"):
        raise _invalid(param, "must be relative to the files root (no '~')")

    root = files_root.resolve()
    pure = PurePosixPath(raw)
    if ".." in pure.parts:
        raise _invalid(param, "must not contain '..' segments: give a path inside the files root")
    candidate = Path(pure) if pure.is_absolute() else root / pure
    try:
        # strict=False: a missing file is reported by the data check as file_not_found, not here.
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError):  # symlink loops, over-long names
        raise _invalid(param, "cannot be resolved") from None
    if not resolved.is_relative_to(root) or resolved == root:
        raise _invalid(param, "must name a file inside the files root (TUNING_FILES_ROOT)")
    # What the job shows: the client's path normalised ("./data//x" -> "data/x"), relative to the root.
    if not pure.is_absolute():
        return str(pure), resolved
    try:
        return PurePosixPath(pure).relative_to(root.as_posix()).as_posix(), resolved
    except ValueError:  # an absolute path through a symlinked root: show where it landed
        return resolved.relative_to(root).as_posix(), resolved

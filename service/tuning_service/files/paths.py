"""Resolve a client-supplied data path (`training_file`, `validation_file`) under the files root.

The client names files relative to `TUNING_FILES_ROOT`. The path's characters and length are the schema's
(schema/jobs.py, FileRef: no control characters, backslashes or '%'); here is where it leads. Anything that
could reach outside the root is refused with 400 `invalid_path`, and the message never contains a server path
(nor the client's string for such paths: it may itself be a probe like "/etc/passwd"). Symlinks are followed
before the containment check, so a link inside the root that points outside is refused too.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from ..errors import APIError

# "C:/...", "c:relative": drive-qualified Windows paths.
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def _invalid(param: str, why: str) -> APIError:
    return APIError(400, "invalid_path", f"{param} {why}", param=param)


def resolve_data_path(raw: str, files_root: Path, *, param: str) -> tuple[str, Path]:
    """Return (normalised relative path as the client should see it, absolute resolved path).

    Raises APIError 400 `invalid_path` for anything that leaves the root.
    """
    if _WINDOWS_DRIVE.match(raw):
        raise _invalid(param, "must be a POSIX path relative to the files root (no drive letters)")
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

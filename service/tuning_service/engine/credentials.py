"""A key's credentials for its trainers (W&B API key, Hugging Face token), handed over in a file.

Not in the trainer's environment: a Ray job's runtime environment is shown on Ray's dashboard, and an
environment is inherited by everything the trainer starts. The file sits in the job's folder (which Ray
workers share) only while a run of the job is followed, readable by the service's user alone; the trainer
reads it at start (tuning_trainer/secrets.py) into its own environment. It is never listed or downloaded.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

FILENAME = ".secrets.json"


def write(job_dir: Path, environment: dict[str, str]) -> None:
    """Write the file (0600 from its creation: never readable by others, even for a moment), or remove a
    stale one when the key has no credentials."""
    path = job_dir / FILENAME
    if not environment:
        remove(job_dir)
        return
    # A fresh name, created here (O_EXCL: never an existing file with other permissions, never through a
    # symlink), then renamed over the file: a reader sees the old file or the new one, whole.
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(environment, fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove(job_dir: Path) -> None:
    try:
        (job_dir / FILENAME).unlink()
    except FileNotFoundError:
        pass

"""A job's secrets: `<output_dir>/.secrets.json`, written by the service (mode 0600) before it launches the
trainer of an API key that has its own Hugging Face token or W&B key, and removed by it afterwards.

The file is a JSON object of environment variable names to values. Only the names in ALLOWED are set into
this process's environment (where huggingface_hub and wandb read them); anything else in the file is
ignored, so the file cannot change how the trainer itself behaves. Values are never printed or recorded:
this module says only which names it set. Standard library only: it runs before anything is imported from
huggingface.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Final

SECRETS_FILE: Final = ".secrets.json"
ALLOWED: Final = ("HF_TOKEN", "WANDB_API_KEY")


def load_secrets(output_dir: str | Path) -> list[str]:
    """Set the allowed secrets of `<output_dir>/.secrets.json` into os.environ (a job's own value wins over
    the environment's); returns the names set. A missing file is nothing to do; an unreadable one is said on
    stderr (by its path alone) and ignored: the job then runs with the environment's credentials, and a
    download or tracker that needed the key fails with its own clear error."""
    path = Path(output_dir) / SECRETS_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        print(f"warning: cannot read {path}: {exc.strerror}", file=sys.stderr, flush=True)
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        # The exception's text could quote the file's content: the path alone.
        print(f"warning: {path} is not valid JSON; ignored", file=sys.stderr, flush=True)
        return []
    if not isinstance(data, dict):
        print(f"warning: {path} is not a JSON object; ignored", file=sys.stderr, flush=True)
        return []
    names = []
    for name in ALLOWED:
        value = data.get(name)
        if isinstance(value, str) and value:
            os.environ[name] = value
            names.append(name)
    return names

"""Python SDK of the tuning service: submit, watch, stream and manage LoRA/QLoRA fine-tuning jobs.

Needs nothing but the standard library and urllib3.

Example:
    >>> from tuning_sdk import TuningClient
    >>> client = TuningClient(api_key="test-key-001", base_url="http://localhost:8000")
    >>> job = client.tunings.create(model="tiny-llama", training_file="data/train.jsonl")
    >>> job = client.tunings.wait(job.id, on_progress=lambda j: print(j.metrics.progress))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._client import DEFAULT_BASE_URL, TuningClient
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    TuningError,
    UnprocessableEntityError,
    WaitTimeoutError,
    WebhookSignatureError,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._models import (
        EstimateMemory,
        Hyperparameters,
        JobDeleted,
        JobError,
        JobStatus,
        LogRecord,
        TrainingMetrics,
        TuningEstimate,
        TuningJob,
    )
    from ._objects import Checkpoint, FileDeleted, FileError, FileObject
    from ._pagination import CursorPage
    from ._transfer import ArchiveError

# The models load with the first name asked for (PEP 562), like the resources that return them
# (_client.py): `import tuning_sdk` stays light (docs/benchmarks.md, B5).
_LAZY = {
    "Hyperparameters": "_models",
    "JobDeleted": "_models",
    "JobError": "_models",
    "JobStatus": "_models",
    "LogRecord": "_models",
    "TrainingMetrics": "_models",
    "TuningEstimate": "_models",
    "TuningJob": "_models",
    "EstimateMemory": "_models",
    "Checkpoint": "_objects",
    "FileDeleted": "_objects",
    "FileError": "_objects",
    "FileObject": "_objects",
    "CursorPage": "_pagination",
    "ArchiveError": "_transfer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tuning_sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "ArchiveError",
    "AuthenticationError",
    "BadRequestError",
    "Checkpoint",
    "ConflictError",
    "CursorPage",
    "EstimateMemory",
    "FileDeleted",
    "FileError",
    "FileObject",
    "Hyperparameters",
    "InternalServerError",
    "JobDeleted",
    "JobError",
    "JobStatus",
    "LogRecord",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "TrainingMetrics",
    "TuningClient",
    "TuningError",
    "TuningEstimate",
    "TuningJob",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "WebhookSignatureError",
    "__version__",
]

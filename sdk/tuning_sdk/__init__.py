"""Python SDK of the tuning service: submit, watch, stream and manage LoRA/QLoRA fine-tuning jobs.

Needs nothing but the standard library and urllib3.

Example:
    >>> from tuning_sdk import TuningClient
    >>> client = TuningClient(api_key="test-key-001", base_url="http://localhost:8000")
    >>> job = client.tunings.create(model="tiny-llama", training_file="data/train.jsonl")
    >>> job = client.tunings.wait(job.id, on_progress=lambda j: print(j.metrics.progress))
"""

from __future__ import annotations

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
from ._models import Hyperparameters, JobDeleted, JobError, JobStatus, LogRecord, TrainingMetrics, TuningJob
from ._objects import Checkpoint, FileDeleted, FileError, FileObject
from ._pagination import CursorPage
from ._transfer import ArchiveError
from ._version import __version__

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
    "TuningJob",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "WebhookSignatureError",
    "__version__",
]

"""Python SDK of the tuning service: submit, watch, stream and manage LoRA/QLoRA fine-tuning jobs, then try
the fine-tuned models (chat completions, completions, models).

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
    QuotaExceededError,
    RateLimitError,
    TuningError,
    UnprocessableEntityError,
    WaitTimeoutError,
    WebhookSignatureError,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._inference import (
        AssistantMessage,
        ChatChoice,
        ChatCompletion,
        ChatCompletionChunk,
        ChoiceLogprobs,
        ChunkChoice,
        Completion,
        CompletionChoice,
        CompletionLogprobs,
        Delta,
        Model,
        ModelDeleted,
        TokenLogprob,
        TopLogprob,
        Usage,
    )
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
    from ._objects import Checkpoint, FileDeleted, FileError, FileObject, KeyLimits, KeyUsage
    from ._pagination import CursorPage
    from ._streaming import Stream
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
    "KeyLimits": "_objects",
    "KeyUsage": "_objects",
    "CursorPage": "_pagination",
    "ArchiveError": "_transfer",
    "AssistantMessage": "_inference",
    "ChatChoice": "_inference",
    "ChatCompletion": "_inference",
    "ChatCompletionChunk": "_inference",
    "ChoiceLogprobs": "_inference",
    "ChunkChoice": "_inference",
    "Completion": "_inference",
    "CompletionChoice": "_inference",
    "CompletionLogprobs": "_inference",
    "Delta": "_inference",
    "Model": "_inference",
    "ModelDeleted": "_inference",
    "TokenLogprob": "_inference",
    "TopLogprob": "_inference",
    "Usage": "_inference",
    "Stream": "_streaming",
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
    "AssistantMessage",
    "AuthenticationError",
    "BadRequestError",
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Checkpoint",
    "ChoiceLogprobs",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "ConflictError",
    "CursorPage",
    "Delta",
    "EstimateMemory",
    "FileDeleted",
    "FileError",
    "FileObject",
    "Hyperparameters",
    "InternalServerError",
    "JobDeleted",
    "JobError",
    "JobStatus",
    "KeyLimits",
    "KeyUsage",
    "LogRecord",
    "Model",
    "ModelDeleted",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "Stream",
    "TokenLogprob",
    "TopLogprob",
    "TrainingMetrics",
    "TuningClient",
    "TuningError",
    "TuningEstimate",
    "TuningJob",
    "UnprocessableEntityError",
    "Usage",
    "WaitTimeoutError",
    "WebhookSignatureError",
    "__version__",
]

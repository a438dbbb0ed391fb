"""Exit codes and failure classification (standard library only; torch is never imported here).

Every way the trainer can end maps to one exit code and, for failures, one machine-readable `code` that goes
into the `failed` record of events.jsonl (docs/trainer-protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_OOM = 3
EXIT_INTERRUPTED = 4

INVALID_CONFIG = "invalid_config"
INVALID_DATA = "invalid_data"
MODEL_NOT_FOUND = "model_not_found"
MODEL_UNAVAILABLE = "model_unavailable"
OUT_OF_MEMORY = "out_of_memory"
TRAINING_ERROR = "training_error"

OOM_HINT = (
    "out of memory: lower batch_size (and raise gradient_accumulation_steps to keep the effective batch), "
    "lower max_seq_length, use method 'qlora', or enable gradient_checkpointing"
)

# Messages by which torch reports an allocation failure without a dedicated exception type.
_OOM_MESSAGES = (
    "DefaultCPUAllocator: can't allocate",
    "DefaultCPUAllocator: not enough memory",
    "CUDA out of memory",
    "CUDA error: out of memory",
    "HIP out of memory",
    "MPS backend out of memory",
    "XPU out of memory",
)


@dataclass
class TrainerError(Exception):
    """A failure the trainer understands: written as a `failed` record, then the process exits `exit_code`."""

    code: str
    message: str
    exit_code: int = EXIT_FAILURE
    hint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message, **self.extra}
        if self.hint:
            out["hint"] = self.hint
        out["exit_code"] = self.exit_code
        return out


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA OOM (torch.cuda.OutOfMemoryError), CPU MemoryError and allocator RuntimeErrors."""
    if isinstance(exc, MemoryError):
        return True
    # torch.cuda.OutOfMemoryError (and torch.OutOfMemoryError) without importing torch here.
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return any(marker in text for marker in _OOM_MESSAGES)
    return False


def suggested_batch_size(batch_size: object) -> int | None:
    """The micro-batch size to retry an out-of-memory run with: the largest divisor of the run's resolved
    `batch_size` that is at most half of it (8 -> 4, 6 -> 3, 5 -> 1), so that gradient accumulation can make
    up for it exactly and each optimizer step keeps its examples; None at 1, or while it was still "auto"."""
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 1:
        return next(d for d in range(batch_size // 2, 0, -1) if batch_size % d == 0)
    return None


def classify(exc: BaseException) -> TrainerError:
    """Map any exception raised while training to the TrainerError that describes it."""
    if isinstance(exc, TrainerError):
        return exc
    if is_out_of_memory(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return TrainerError(OUT_OF_MEMORY, first[:500], EXIT_OOM, hint=OOM_HINT)
    return TrainerError(TRAINING_ERROR, f"{type(exc).__name__}: {exc}"[:2000], EXIT_FAILURE)

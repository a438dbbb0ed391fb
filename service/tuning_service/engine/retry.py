"""auto_retry: which failures are the infrastructure's, and how a job is queued again after one.

A retry is a resume the service does by itself: the job keeps its id and continues from its newest
checkpoint (from the beginning without one). Only failures that say nothing about the job itself are
retried: the trainer crashed or was killed by a signal it did not expect, ran out of memory, or its service
or executor went away. A user's error (bad data or config, a model that is not there, a job that diverged in
a way the trainer reports) would fail the same way again and is never retried; nor is a job that was being
cancelled or that hit its max_runtime_seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning_trainer.config import Hyperparameters

from ..states import JobStatus
from .checkpoints import requeue_fields

OUT_OF_MEMORY = "out_of_memory"
MAX_ACCUMULATION = next(
    m.le for m in Hyperparameters.model_fields["gradient_accumulation_steps"].metadata if hasattr(m, "le")
)
INFRASTRUCTURE_FAILURES = frozenset(
    {
        "trainer_crashed",  # exited without a verdict (segfault, a killed child under accelerate)
        "trainer_killed",  # a signal nobody here sent (the kernel's OOM killer: SIGKILL)
        "interrupted",  # stopped by an outside SIGTERM/SIGINT (a host shutting down), after a checkpoint
        OUT_OF_MEMORY,
        "service_restart",  # the trainer went with the service
    }
)
# Not `executor_lost`: an unreachable Ray head does not mean the run is gone (a network partition, a head
# restarting), and a retry would start a second trainer writing the same job folder beside it.


@dataclass(frozen=True)
class Retry:
    """How a failed run's job is queued again."""

    fields: dict[str, Any]
    """The job row's columns"""
    record: dict[str, Any]
    """The `retry` record's data"""
    message: str
    """The `queued` status record's message"""
    discard_checkpoints: bool = False
    """The checkpoints on disk cannot be continued by the next run (another packing): put them aside"""


def retry_plan(row: dict[str, Any], error: dict[str, Any], checkpoints: dict[int, Path]) -> Retry | None:
    """For a job whose run just failed with `error`: how it is queued again, or None when it is not to be
    retried."""
    allowed = int((row["request"] or {}).get("auto_retry") or 0)
    used = int(row.get("retries") or 0)
    code = str(error.get("code") or "")
    if used >= allowed or code not in INFRASTRUCTURE_FAILURES:
        return None
    if row.get("status") != JobStatus.RUNNING.value:
        return None  # a stop was asked for (cancel, pause): the run ended as wanted
    if row.get("deadline_requested_at") is not None:
        return None
    step = max(checkpoints) if checkpoints else None
    smaller = None
    hp = None
    discard = False
    if code == OUT_OF_MEMORY:
        hp = _smaller_batch(row["hyperparameters"] or {}, (row.get("terminal_record") or {}))
        if hp is not None:
            smaller = hp["batch_size"]
            if hp.get("packing"):
                # Packed bins are cut to the token budget: a smaller budget makes other bins, and a
                # checkpoint of the old ones cannot be continued (the trainer refuses another total_steps),
                # nor by any later resume: they are put aside (`discard_checkpoints`).
                step, discard = None, bool(checkpoints)
    fields = requeue_fields(None if step is None else checkpoints[step])
    fields["retries"] = used + 1
    if hp is not None:
        fields["hyperparameters"] = hp
    where = (
        f"from the checkpoint of step {step}"
        if step is not None
        else "from the beginning (checkpoints of the old packing put aside)"
        if discard
        else "from the beginning (no checkpoint)"
    )
    message = f"{code}: retry {used + 1} of {allowed}, {where}" + (
        f", with batch_size {smaller}" if smaller is not None else ""
    )
    record = {
        "attempt": used + 1,
        "max_retries": allowed,
        "reason": code,
        "message": str(error.get("message") or code),
        "step": step,
        "checkpoint": None if step is None else f"checkpoints/{checkpoints[step].name}",
        "batch_size": smaller,
    }
    return Retry(fields, record, message, discard)


def _smaller_batch(hp: dict[str, Any], terminal: dict[str, Any]) -> dict[str, Any] | None:
    """The hyperparameters with the micro-batch the trainer suggested after running out of memory, and
    gradient accumulation raised by the same factor. Without packing an optimizer step then trains on the
    very same examples (a micro-batch is a run of the epoch's shuffled order, and ceil(ceil(n/b)/g) =
    ceil(n/(b*g))): the step count, the schedule and the checkpoint stay valid, and the run continues as it
    would have (tests/trainer/test_checkpoint_resume.py). With packing the token budget shrinks instead.
    None: no usable suggestion (none, or one that does not divide the micro-batch)."""
    suggested = terminal.get("suggested_batch_size")
    batch = hp.get("batch_size")
    if not isinstance(suggested, int) or not isinstance(batch, int) or not 1 <= suggested < batch:
        return None
    if batch % suggested:
        return None  # the effective batch could not be kept exactly
    factor = batch // suggested
    accumulation = int(hp.get("gradient_accumulation_steps") or 1) * factor
    if accumulation > MAX_ACCUMULATION:
        return None  # beyond its limit the trainer would refuse the config
    out = {**hp, "batch_size": suggested, "gradient_accumulation_steps": accumulation}
    if hp.get("packing") and isinstance(hp.get("max_tokens_per_batch"), int):
        out["max_tokens_per_batch"] = max(8, hp["max_tokens_per_batch"] // factor)
    return out

"""Typed views of uploaded files, job checkpoints and an API key's usage (as in `_models`: frozen, tolerant,
`raw` kept, and mirroring the service's document field for field)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._models import _opt_float, _opt_int, _opt_str

__all__ = ["Checkpoint", "FileDeleted", "FileError", "FileObject", "KeyLimits", "KeyUsage"]


@dataclass(frozen=True)
class FileError:
    """Why an uploaded file failed validation: the data `code`, a `message` and the 1-based `line` (None for
    whole-file problems such as an empty file)."""

    code: str = ""
    message: str = ""
    line: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileError:
        return cls(
            code=_opt_str(data.get("code")) or "",
            message=_opt_str(data.get("message")) or "",
            line=_opt_int(data.get("line")),
        )

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.message or 'invalid file'}" + (f" ({self.code})" if self.code else "")


@dataclass(frozen=True)
class FileObject:
    """An uploaded data file. See docs/api.md, "Files".

    Attributes:
        status: ``processed`` (valid; `format` and `num_examples` set) or ``error`` (`error` says why).

    Example:
        >>> f = client.files.upload("train.jsonl")
        >>> f.id, f.status, f.num_examples
        ('file-5d1c...', 'processed', 120)
    """

    id: str
    status: str
    filename: str = ""
    bytes: int = 0
    purpose: str = "fine-tune"
    object: str = "file"
    created_at: int = 0
    format: str | None = None
    num_examples: int | None = None
    status_details: str | None = None
    error: FileError | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_processed(self) -> bool:
        """True when the file passed validation and can be named by a job."""
        return self.status == "processed"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileObject:
        error = data.get("error")
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status", "")),
            filename=str(data.get("filename") or ""),
            bytes=_opt_int(data.get("bytes")) or 0,
            purpose=str(data.get("purpose") or "fine-tune"),
            object=str(data.get("object", "file")),
            created_at=_opt_int(data.get("created_at")) or 0,
            format=_opt_str(data.get("format")),
            num_examples=_opt_int(data.get("num_examples")),
            status_details=_opt_str(data.get("status_details")),
            error=FileError.from_dict(error) if isinstance(error, Mapping) else None,
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The file object as the service sent it."""
        return dict(self.raw)


@dataclass(frozen=True)
class FileDeleted:
    """The answer to `files.delete`."""

    id: str
    deleted: bool
    object: str = "file"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileDeleted:
        return cls(
            id=str(data.get("id", "")),
            deleted=bool(data.get("deleted", False)),
            object=str(data.get("object", "file")),
        )


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint a job saved: its `step`, when, where (`path`, relative to the job's folder on the server)
    and the metrics at that step: `metrics` is the document's CheckpointMetrics as a mapping (``step``,
    ``train_loss``, ``train_token_accuracy``, ``learning_rate``, ``epoch``, ``eval_loss``,
    ``eval_token_accuracy``; a value is None when it was not reported).
    ``client.tunings.download(job_id, folder, checkpoint=step)`` fetches it.

    Example:
        >>> [(c.step, c.train_loss) for c in client.tunings.checkpoints(job.id)]
        [(4, 1.83), (8, 1.52)]
    """

    id: str
    step: int
    created_at: int = 0
    path: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    object: str = "tuning.checkpoint"
    job_id: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def train_loss(self) -> float | None:
        return _opt_float(self.metrics.get("train_loss"))

    @property
    def eval_loss(self) -> float | None:
        return _opt_float(self.metrics.get("eval_loss"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        metrics = data.get("metrics")
        return cls(
            id=str(data.get("id", "")),
            step=_opt_int(data.get("step")) or 0,
            created_at=_opt_int(data.get("created_at")) or 0,
            path=_opt_str(data.get("path")) or "",
            metrics=dict(metrics) if isinstance(metrics, Mapping) else {},
            object=str(data.get("object", "tuning.checkpoint")),
            job_id=_opt_str(data.get("job_id")) or "",
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


@dataclass(frozen=True)
class KeyLimits:
    """An API key's limits (set on the server: ``python -m tuning_service keys update --max-...``); None: no
    limit.

    Attributes:
        max_running_jobs: jobs of the key holding a slot at once (more wait in the queue).
        max_queued_jobs: queued jobs of the key; a create beyond it is refused (`QuotaExceededError`).
        max_gpu_hours: GPU hours over the quota window; once used, a create is refused (`QuotaExceededError`).
    """

    max_running_jobs: int | None = None
    max_queued_jobs: int | None = None
    max_gpu_hours: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyLimits:
        return cls(
            max_running_jobs=_opt_int(data.get("max_running_jobs")),
            max_queued_jobs=_opt_int(data.get("max_queued_jobs")),
            max_gpu_hours=_opt_float(data.get("max_gpu_hours")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class KeyUsage:
    """What the calling API key holds and has used, and its limits: the answer to ``client.usage.retrieve()``
    (``GET /v1/usage``).

    Attributes:
        key_id: the key's id (``key_...``; never the key itself).
        running_jobs: its jobs holding a slot (running, cancelling, pausing).
        queued_jobs: its jobs waiting in the queue.
        gpu_hours: GPU time of its runs over the last `window_days` (wall time x GPUs held; on a service
            without GPUs, process hours), the running ones counted up to now.
        window_days: the quota window.
        limits: the key's `KeyLimits` (None in each: no limit).

    Example:
        >>> u = client.usage.retrieve()
        >>> u.gpu_hours, u.limits.max_gpu_hours
        (3.25, 100.0)
    """

    key_id: str = ""
    running_jobs: int = 0
    queued_jobs: int = 0
    gpu_hours: float = 0.0
    window_days: float = 0.0
    limits: KeyLimits = field(default_factory=KeyLimits)
    object: str = "usage"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyUsage:
        limits = data.get("limits")
        return cls(
            key_id=_opt_str(data.get("key_id")) or "",
            running_jobs=_opt_int(data.get("running_jobs")) or 0,
            queued_jobs=_opt_int(data.get("queued_jobs")) or 0,
            gpu_hours=_opt_float(data.get("gpu_hours")) or 0.0,
            window_days=_opt_float(data.get("window_days")) or 0.0,
            limits=KeyLimits.from_dict(limits) if isinstance(limits, Mapping) else KeyLimits(),
            object=str(data.get("object", "usage")),
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The usage object as the service sent it."""
        return dict(self.raw)

"""Typed views of uploaded files and job checkpoints (as in `_models`: frozen, tolerant, `raw` kept, and
mirroring the service's document field for field)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._models import _opt_float, _opt_int, _opt_str

__all__ = ["Checkpoint", "FileDeleted", "FileError", "FileObject"]


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

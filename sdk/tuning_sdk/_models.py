"""Typed, immutable views of the API's JSON objects.

Every model is a frozen dataclass built by `from_dict`, which ignores fields it does not know (a newer service
may send more) and keeps the original object in `raw`, so nothing the service sends is ever lost.

The fields mirror the service's document (`GET /openapi.json`, components/schemas) name for name and type for
type: a field the document says can be null is ``X | None`` here, one it never sends as null is plain ``X``
(tests/sdk/test_contract.py holds the two together). Should a server leave such a field out, `from_dict`
fills in a neutral value (``0``, ``""``, ``False``, ``()``) rather than failing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "EstimateMemory",
    "Hyperparameters",
    "JobDeleted",
    "JobError",
    "JobStatus",
    "LogRecord",
    "TrainingMetrics",
    "TuningEstimate",
    "TuningJob",
]


class JobStatus(str, Enum):
    """Job statuses. `TuningJob.status` is a plain ``str`` (a newer service may add statuses); these compare
    equal to it: ``job.status == JobStatus.SUCCEEDED``."""

    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    PAUSING = "pausing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self.value in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _opt_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _epoch(value: Any, total: int | None) -> int | None:
    """The 1-based epoch in progress (None when not reported). The service sends an integer; a fractional
    epoch (an older service passing on the trainer's ``1.26``: a quarter into the second epoch) becomes the
    epoch it is in, capped at the total (``3.0`` of 3 is the end of the third)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return value
    if value <= 0:
        return 0
    epoch = math.floor(value) + 1
    return min(epoch, total) if total else epoch


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_LEGACY_METHODS = frozenset({"qlora", "lora"})


def _method_and_adapter(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(training method, adapter) of an object that has both. An older service (before preference tuning)
    sent only `method`, and it named the adapter: ``"lora"`` there is ``("sft", "lora")`` here, as the
    service reads those values today."""
    method, adapter = _opt_str(data.get("method")), _opt_str(data.get("adapter"))
    if adapter is None and method in _LEGACY_METHODS:
        return "sft", method
    return method, adapter


def _str_tuple(value: Any) -> tuple[str, ...] | None:
    """A JSON array of strings as a tuple (immutable, like the model holding it); None if not an array."""
    return tuple(str(x) for x in value) if isinstance(value, (list, tuple)) else None


def _mapping_tuple(value: Any) -> tuple[Mapping[str, Any], ...]:
    """A JSON array of objects as a tuple of them, as sent (empty if not an array)."""
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(dict(x) for x in value if isinstance(x, Mapping))


@dataclass(frozen=True)
class TrainingMetrics:
    """A job's latest training progress, as reported by the trainer.

    Attributes:
        progress: fraction of the run done, 0..1 (never None: 0.0 until the trainer reports a step).
        current_step / total_steps: optimizer steps done / planned (None until the trainer says).
        current_epoch / total_epochs: 1-based epoch in progress / planned epochs (None until the trainer
            says).
        train_loss: latest training loss (None before the first step is reported).
        eval_loss: latest validation loss (None without a validation file).
        train_token_accuracy / eval_token_accuracy: share of the trained (validation) tokens predicted
            right, as last reported.
        learning_rate, tokens_per_second, eta_seconds: as last reported.
        rewards_margin / rewards_accuracy: a preference job's latest reward margin (chosen minus rejected)
            and share of pairs won (None for sft); eval_rewards_margin / eval_rewards_accuracy: the same over
            the validation pairs.
    """

    progress: float = 0.0
    current_step: int | None = None
    total_steps: int | None = None
    current_epoch: int | None = None
    total_epochs: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    train_token_accuracy: float | None = None
    eval_token_accuracy: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    rewards_margin: float | None = None
    rewards_accuracy: float | None = None
    eval_rewards_margin: float | None = None
    eval_rewards_accuracy: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingMetrics:
        progress = _opt_float(data.get("progress")) or 0.0
        total_epochs = _opt_int(data.get("total_epochs"))
        return cls(
            progress=min(1.0, max(0.0, progress)),
            current_step=_opt_int(data.get("current_step")),
            total_steps=_opt_int(data.get("total_steps")),
            current_epoch=_epoch(data.get("current_epoch"), total_epochs),
            total_epochs=total_epochs,
            train_loss=_opt_float(data.get("train_loss")),
            eval_loss=_opt_float(data.get("eval_loss")),
            train_token_accuracy=_opt_float(data.get("train_token_accuracy")),
            eval_token_accuracy=_opt_float(data.get("eval_token_accuracy")),
            learning_rate=_opt_float(data.get("learning_rate")),
            tokens_per_second=_opt_float(data.get("tokens_per_second")),
            eta_seconds=_opt_float(data.get("eta_seconds")),
            rewards_margin=_opt_float(data.get("rewards_margin")),
            rewards_accuracy=_opt_float(data.get("rewards_accuracy")),
            eval_rewards_margin=_opt_float(data.get("eval_rewards_margin")),
            eval_rewards_accuracy=_opt_float(data.get("eval_rewards_accuracy")),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Hyperparameters:
    """Training hyperparameters. Leave a field ``None`` to take the service's default.

    The first three are the common ones; ``epochs``, ``batch_size`` and ``max_tokens_per_batch`` also accept
    ``"auto"`` (resolved from the data set size), ``gradient_checkpointing`` too (from a memory estimate).
    ``dpo_beta`` and ``simpo_gamma_beta_ratio`` are for the preference methods (``dpo``, ``orpo``,
    ``simpo``): ``dpo_beta`` is DPO's β, ORPO's λ or SimPO's β (``"auto"``: the method's recommended value),
    ``simpo_gamma_beta_ratio`` SimPO's target margin γ as a multiple of it, ``dpo_reference`` DPO's reference
    for a job started from a checkpoint (``"base"``: the base with the adapter off; ``"initial"``: a frozen
    copy of the starting adapter). Names the SDK does not know yet can be passed in ``extra``.

    Example:
        >>> Hyperparameters(epochs=3, learning_rate=2e-4).to_dict()
        {'epochs': 3, 'learning_rate': 0.0002}
    """

    epochs: int | str | None = None
    learning_rate: float | None = None
    batch_size: int | str | None = None
    gradient_accumulation_steps: int | None = None
    warmup_ratio: float | None = None
    lr_scheduler_type: str | None = None
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    max_seq_length: int | None = None
    max_steps: int | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_target_modules: str | list[str] | None = None
    train_on_inputs: bool | None = None
    eval_steps: int | None = None
    save_steps: int | None = None
    logging_steps: int | None = None
    gradient_checkpointing: bool | str | None = None
    packing: bool | None = None
    max_tokens_per_batch: int | str | None = None
    attn_implementation: str | None = None
    torch_compile: bool | None = None
    dpo_beta: float | str | None = None
    simpo_gamma_beta_ratio: float | None = None
    dpo_reference: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The request form: only the fields that were set, plus `extra`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hyperparameters:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)


@dataclass(frozen=True)
class JobError:
    """Why a job failed: `code` and `message`, plus the trainer's exit status and the tail of its output.

    Attributes:
        code: machine-readable (``trainer_killed``, ``trainer_crashed``, ``out_of_memory``, ``invalid_data``,
            ...).
        message: for people.
        param: the offending field, dotted, when one is to blame.
        exit_code: the trainer's exit status (its protocol code when it reported one).
        signal: the signal that killed the trainer, by name (``"SIGKILL"``), or None.
        log_tail: the last lines of the trainer's output, oldest first.
        hint: what to try (e.g. ``"lower batch_size"`` after ``out_of_memory``).
        data_code / line: a data-file problem's code (``invalid_json``) and 1-based line.
        checkpoint_path: the last checkpoint of an interrupted trainer.
    """

    code: str = ""
    message: str = ""
    param: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    log_tail: tuple[str, ...] = ()
    hint: str | None = None
    data_code: str | None = None
    line: int | None = None
    checkpoint_path: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobError:
        tail = data.get("log_tail")
        return cls(
            code=_opt_str(data.get("code")) or "",
            message=_opt_str(data.get("message")) or "",
            param=_opt_str(data.get("param")),
            exit_code=_opt_int(data.get("exit_code")),
            signal=_opt_str(data.get("signal")),
            # An array in the document; a single string (a hand-made or older object) is its lines.
            log_tail=tuple(tail.splitlines()) if isinstance(tail, str) else _str_tuple(tail) or (),
            hint=_opt_str(data.get("hint")),
            data_code=_opt_str(data.get("data_code")),
            line=_opt_int(data.get("line")),
            checkpoint_path=_opt_str(data.get("checkpoint_path")),
            raw=dict(data),
        )

    def __str__(self) -> str:
        text = self.message or "job failed"
        if self.code:
            text = f"{text} ({self.code})"
        return text


@dataclass(frozen=True)
class TuningJob:
    """A fine-tuning job. See docs/api.md, "The job object".

    Attributes:
        method: what the adapter is trained for: ``"sft"`` (supervised), or a preference objective on
            chosen/rejected pairs: ``"dpo"``, ``"orpo"``, ``"simpo"``.
        adapter: how the adapter sits on the base: ``"qlora"`` (a 4-bit base) or ``"lora"``.
        from_checkpoint: the adapter the job started from, as given on create (``"ftjob-..."``,
            ``"ftjob-...:STEP"`` or ``"ftckpt-..."``); None for a fresh adapter.
        integrations: the experiment trackers the trainer logs to, each as sent: ``{"type": "wandb",
            "wandb": {"project", "name", "entity", "tags"}}``, ``{"type": "mlflow", "mlflow":
            {"tracking_uri", "experiment"}}``, ``{"type": "tensorboard"}`` (empty: none).
        priority: the queue's order, -100..100 (higher first; 0 by default).
        max_runtime_seconds: the training time allowed (the job's own, or the service's default when it
            was created); None: no limit. A job past it fails with ``deadline_exceeded``, keeping a
            checkpoint that `resume` continues from.
        auto_retry / retries: how many automatic retries after an infrastructure failure the job allows,
            and how many it has used (each one a ``retry`` record).

    Example:
        >>> job = client.tunings.get("ftjob-...")
        >>> job.status, job.metrics.progress if job.metrics else None
    """

    id: str
    status: str
    model: str
    training_file: str
    object: str = "tuning.job"
    fine_tuned_model: str | None = None
    adapter_path: str | None = None
    validation_file: str | None = None
    method: str = ""
    adapter: str = ""
    from_checkpoint: str | None = None
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    suffix: str | None = None
    seed: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    duration: float | None = None
    queue_position: int | None = None
    trained_tokens: int | None = None
    error: JobError | None = None
    metrics: TrainingMetrics | None = None
    resume_on_restart: bool = False
    num_gpus: int = 1
    distributed: str = "ddp"
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] | None = None
    integrations: tuple[Mapping[str, Any], ...] = ()
    priority: int = 0
    max_runtime_seconds: int | None = None
    auto_retry: int = 0
    retries: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """True once the job has ended: succeeded, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_successful(self) -> bool:
        """True when the job succeeded (the adapter is ready)."""
        return self.status == JobStatus.SUCCEEDED.value

    @property
    def is_running(self) -> bool:
        """True while the trainer works on the job (running, or stopping for a cancel or a pause)."""
        return self.status in ("running", "cancelling", "pausing")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuningJob:
        hp = data.get("hyperparameters")
        metrics = data.get("metrics")
        error = data.get("error")
        if isinstance(error, str):
            error = {"message": error}
        metadata = data.get("metadata")
        method, adapter = _method_and_adapter(data)
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status", "")),
            model=str(data.get("model", "")),
            training_file=str(data.get("training_file", "")),
            object=str(data.get("object", "tuning.job")),
            fine_tuned_model=_opt_str(data.get("fine_tuned_model")),
            adapter_path=_opt_str(data.get("adapter_path")),
            validation_file=_opt_str(data.get("validation_file")),
            method=method or "",
            adapter=adapter or "",
            from_checkpoint=_opt_str(data.get("from_checkpoint")),
            hyperparameters=Hyperparameters.from_dict(hp) if isinstance(hp, Mapping) else Hyperparameters(),
            suffix=_opt_str(data.get("suffix")),
            seed=_opt_int(data.get("seed")) or 0,
            metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, Mapping) else {},
            created_at=_opt_int(data.get("created_at")) or 0,
            started_at=_opt_int(data.get("started_at")),
            finished_at=_opt_int(data.get("finished_at")),
            duration=_opt_float(data.get("duration")),
            queue_position=_opt_int(data.get("queue_position")),
            trained_tokens=_opt_int(data.get("trained_tokens")),
            error=JobError.from_dict(error) if isinstance(error, Mapping) else None,
            metrics=TrainingMetrics.from_dict(metrics) if isinstance(metrics, Mapping) else None,
            resume_on_restart=data.get("resume_on_restart") is True,
            num_gpus=_opt_int(data.get("num_gpus")) or 1,
            distributed=_opt_str(data.get("distributed")) or "ddp",
            webhook_url=_opt_str(data.get("webhook_url")),
            webhook_events=_str_tuple(data.get("webhook_events")),
            integrations=_mapping_tuple(data.get("integrations")),
            priority=_opt_int(data.get("priority")) or 0,
            max_runtime_seconds=_opt_int(data.get("max_runtime_seconds")),
            auto_retry=_opt_int(data.get("auto_retry")) or 0,
            retries=_opt_int(data.get("retries")) or 0,
            raw=dict(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The job as the service sent it (unknown fields included)."""
        return dict(self.raw)


@dataclass(frozen=True)
class EstimateMemory:
    """A dry run's peak memory estimate per device (GPU, or the machine's RAM on CPU), in MiB.

    Attributes:
        peak_mb: the estimated peak; device_mb: the device's memory; fits: the peak is within 95% of it.
        breakdown_mb: weights, adapter, activation, attention, loss, overhead.
    """

    peak_mb: int = 0
    device_mb: int = 0
    fits: bool = False
    breakdown_mb: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EstimateMemory:
        breakdown = data.get("breakdown_mb")
        return cls(
            peak_mb=_opt_int(data.get("peak_mb")) or 0,
            device_mb=_opt_int(data.get("device_mb")) or 0,
            fits=bool(data.get("fits", False)),
            breakdown_mb=dict(breakdown) if isinstance(breakdown, Mapping) else {},
        )


@dataclass(frozen=True)
class TuningEstimate:
    """What ``tunings.create(..., dry_run=True)`` returns: the job as the trainer would run it (no job is
    made). The counts, steps and padding efficiency are the ones the real job's ``started`` record reports.

    Attributes:
        num_examples, num_eval_examples, num_tokens, trainable_tokens, truncated_examples, dropped_examples:
            the data, tokenised with the model's tokenizer.
        total_steps, total_epochs, steps_per_epoch, resolved_auto, hyperparameters: the plan ("auto"
            resolved).
        padding_efficiency, micro_batch_tokens, attn_implementation, gradient_checkpointing: how it batches.
        tokens_to_process, num_processes, device: the work and where it runs.
        memory: the estimated peak per device and whether it fits.
        estimated_seconds: from this service's past jobs of the same model shape, method and device (None
            where there are none); based_on_jobs: how many.
        method, adapter: as on the job (``"sft"``/``"dpo"``/``"orpo"``/``"simpo"``; ``"qlora"``/``"lora"``).
    """

    object: str = "tuning.estimate"
    model: str = ""
    method: str = ""
    adapter: str = ""
    num_examples: int = 0
    num_eval_examples: int = 0
    num_tokens: int = 0
    trainable_tokens: int = 0
    truncated_examples: int = 0
    dropped_examples: int = 0
    total_steps: int = 0
    total_epochs: int = 0
    steps_per_epoch: int = 0
    resolved_auto: Mapping[str, Any] = field(default_factory=dict)
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    padding_efficiency: float = 0.0
    micro_batch_tokens: int = 0
    attn_implementation: str = ""
    gradient_checkpointing: bool = False
    tokens_to_process: int = 0
    num_processes: int = 0
    device: str = ""
    shape: Mapping[str, Any] = field(default_factory=dict)
    memory: EstimateMemory = field(default_factory=EstimateMemory)
    estimated_seconds: float | None = None
    based_on_jobs: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuningEstimate:
        ints = {
            name: _opt_int(data.get(name)) or 0
            for name in (
                "num_examples", "num_eval_examples", "num_tokens", "trainable_tokens", "truncated_examples",
                "dropped_examples", "total_steps", "total_epochs", "steps_per_epoch", "micro_batch_tokens",
                "tokens_to_process", "num_processes", "based_on_jobs",
            )
        }  # fmt: skip
        hp, memory = data.get("hyperparameters"), data.get("memory")
        method, adapter = _method_and_adapter(data)
        return cls(
            object=str(data.get("object", "tuning.estimate")),
            model=str(data.get("model", "")),
            method=method or "",
            adapter=adapter or "",
            resolved_auto=dict(data.get("resolved_auto") or {}),
            hyperparameters=Hyperparameters.from_dict(hp) if isinstance(hp, Mapping) else Hyperparameters(),
            padding_efficiency=_opt_float(data.get("padding_efficiency")) or 0.0,
            attn_implementation=str(data.get("attn_implementation", "")),
            gradient_checkpointing=bool(data.get("gradient_checkpointing", False)),
            device=str(data.get("device", "")),
            shape=dict(data.get("shape") or {}),
            memory=EstimateMemory.from_dict(memory) if isinstance(memory, Mapping) else EstimateMemory(),
            estimated_seconds=_opt_float(data.get("estimated_seconds")),
            raw=dict(data),
            **ints,
        )


@dataclass(frozen=True)
class JobDeleted:
    """The answer to `tunings.delete`."""

    id: str
    deleted: bool
    object: str = "tuning.job"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobDeleted:
        return cls(
            id=str(data.get("id", "")),
            deleted=bool(data.get("deleted", False)),
            object=str(data.get("object", "tuning.job")),
        )


_RECORD_BASE = ("seq", "type", "time")


def _reward_parts(margin: Any, accuracy: Any) -> list[str]:
    """A preference job's reward margin and accuracy for a progress line (nothing for a value that is not a
    number: an SFT job has neither)."""
    m, a = _opt_float(margin), _opt_float(accuracy)
    return ([f"reward margin {m:.4f}"] if m is not None else []) + (
        [f"reward acc {a:.1%}"] if a is not None else []
    )


@dataclass(frozen=True)
class LogRecord:
    """One record of a job's log: trainer events (`started`, `metrics`, `eval`, `checkpoint`, `completed`,
    `failed`, `interrupted`, `warning`), the service's `status` changes, `log` lines of the trainer's output,
    webhook attempts, and `retry` (an automatic retry after an infrastructure failure: ``attempt``,
    ``max_retries``, ``reason``, ``message``, ``step``, ``checkpoint``, ``batch_size``).

    The type-specific fields are in `data`; ``record["loss"]`` and ``record.get("loss")`` read them. A
    preference job's (dpo, orpo, simpo) `metrics` records also carry ``rewards_chosen``,
    ``rewards_rejected``, ``rewards_margin`` and ``rewards_accuracy``, its `eval` records
    ``eval_rewards_chosen`` ... ``eval_rewards_accuracy`` (``record.get("rewards_margin")``: None on an SFT
    job's). A `warning` (something that does not stop the run, e.g. an experiment tracker that failed and was
    turned off) has ``code``, ``message`` and ``tracker``.

    Example:
        >>> for rec in client.tunings.stream_logs(job.id):
        ...     if rec.type == "metrics":
        ...         print(rec.seq, rec["step"], rec["loss"])
    """

    seq: int
    type: str
    time: float = 0.0
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogRecord:
        return cls(
            seq=_opt_int(data.get("seq")) or 0,
            type=str(data.get("type", "")),
            time=_opt_float(data.get("time")) or 0.0,
            data={k: v for k, v in data.items() if k not in _RECORD_BASE},
        )

    def __getitem__(self, name: str) -> Any:
        return self.data[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """The record as the service sent it."""
        return {"seq": self.seq, "type": self.type, "time": self.time, **self.data}

    @property
    def is_terminal_status(self) -> bool:
        """True for the `status` record that makes the job terminal (the stream's last record)."""
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES

    def format(self) -> str:
        """A one-line human rendering, as `tuning jobs logs` prints it."""
        d = self.data
        if self.type == "log":
            return str(d.get("line", ""))
        if self.type == "status":
            msg = d.get("message")
            return f"status: {d.get('status')}" + (f" ({msg})" if msg else "")
        if self.type == "metrics":
            parts = [f"step {d.get('step')}/{d.get('total_steps')}"]
            if isinstance(d.get("epoch"), (int, float)):
                parts.append(f"epoch {d['epoch']:.2f}")
            if isinstance(d.get("loss"), (int, float)):
                parts.append(f"loss {d['loss']:.4f}")
            if isinstance(d.get("learning_rate"), (int, float)):
                parts.append(f"lr {d['learning_rate']:.2e}")
            parts += _reward_parts(d.get("rewards_margin"), d.get("rewards_accuracy"))
            if isinstance(d.get("tokens_per_second"), (int, float)):
                parts.append(f"{d['tokens_per_second']:.0f} tok/s")
            return "metrics: " + " | ".join(parts)
        if self.type == "started":
            method = d.get("method") or "training"
            if d.get("adapter"):
                method = f"{method} ({d['adapter']})"
            return (
                f"started: {d.get('total_steps')} steps, {d.get('total_epochs')} epoch(s), "
                f"{d.get('num_examples')} examples, {method} on {d.get('device')}"
            )
        if self.type == "completed":
            loss = d.get("final_loss")
            loss_text = f", final loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
            return f"completed: adapter at {d.get('adapter_path')}{loss_text}"
        if self.type == "failed":
            return f"failed: {d.get('message')} ({d.get('code')})"
        if self.type == "warning":
            tracker = f"{d['tracker']}: " if d.get("tracker") else ""
            return f"warning: {tracker}{d.get('message')} ({d.get('code')})"
        if self.type == "retry":
            step = d.get("step")
            text = f"retry {d.get('attempt')}/{d.get('max_retries')} ({d.get('reason')}) from " + (
                f"step {step}" if step is not None else "the beginning"
            )
            if d.get("batch_size") is not None:
                text += f", batch_size {d['batch_size']}"
            return text + (f": {d['message']}" if d.get("message") else "")
        if self.type == "eval":
            rewards = _reward_parts(d.get("eval_rewards_margin"), d.get("eval_rewards_accuracy"))
            if isinstance(d.get("eval_loss"), (int, float)) or rewards:
                parts = [f"step {d.get('step')}"]
                if isinstance(d.get("eval_loss"), (int, float)):
                    parts.append(f"eval_loss {d['eval_loss']:.4f}")
                return "eval: " + " | ".join(parts + rewards)
        fields = " ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, (dict, list)))
        return f"{self.type}: {fields}".rstrip(": ")

"""Pure functions from the trainer's records to the job row: progress while it runs, the
verdict at the end."""

from __future__ import annotations

import math
import signal
from typing import Any

from ..schema.jobs import JobError, TrainingMetrics
from ..states import JobStatus
from .tailer import Record

TERMINAL_TYPES = frozenset({"completed", "failed", "interrupted"})
DEADLINE_EXCEEDED = "deadline_exceeded"


def new_metrics() -> dict[str, Any]:
    """A job's metrics before the trainer has said anything: every field of TrainingMetrics, progress 0."""
    return {**dict.fromkeys(TrainingMetrics.model_fields), "progress": 0.0}


def job_error(code: str, message: str, **fields: Any) -> dict[str, Any]:
    """A failed job's `error`: every field of JobError (null where there is nothing to say), always in the
    same order, so clients see one stable shape."""
    error: dict[str, Any] = {**dict.fromkeys(JobError.model_fields), "code": code, "message": message}
    error["log_tail"] = []
    error.update(fields)
    return error


def _progress(step: Any, total: Any) -> float | None:
    if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
        return round(min(1.0, max(0.0, step / total)), 4)
    return None


def progress_fields(row: dict[str, Any], records: list[Record]) -> dict[str, Any]:
    """Job-row columns to update for new trainer records (only the columns that change)."""
    fields: dict[str, Any] = {}
    metrics: dict[str, Any] | None = dict(row["metrics"]) if row["metrics"] else None
    terminal = row["terminal_record"]
    for type_, time_, data in records:
        if type_ == "started":
            total = data.get("total_steps")
            start = data.get("start_step") or 0
            metrics = new_metrics()
            metrics.update(
                progress=_progress(start, total) or 0.0,
                current_step=start,
                total_steps=total,
                current_epoch=_epoch_in_progress(
                    start / data["steps_per_epoch"] if data.get("steps_per_epoch") else 0.0,
                    data.get("total_epochs"),
                ),
                total_epochs=data.get("total_epochs"),
            )
            cfg = data.get("config")
            hp = dict(row["hyperparameters"] or {})
            if isinstance(cfg, dict) and isinstance(cfg.get("hyperparameters"), dict):
                hp.update(cfg["hyperparameters"])
            if isinstance(data.get("resolved_auto"), dict):
                hp.update(data["resolved_auto"])
            fields["hyperparameters"] = hp
        elif type_ == "metrics":
            metrics = metrics or new_metrics()
            step, total = data.get("step"), data.get("total_steps", metrics.get("total_steps"))
            metrics.update(
                current_step=step,
                total_steps=total,
                current_epoch=_epoch_in_progress(data.get("epoch"), metrics.get("total_epochs"))
                or metrics.get("current_epoch"),
                train_loss=data.get("loss", metrics.get("train_loss")),
                train_token_accuracy=data.get("token_accuracy", metrics.get("train_token_accuracy")),
                learning_rate=data.get("learning_rate", metrics.get("learning_rate")),
                tokens_per_second=data.get("tokens_per_second", metrics.get("tokens_per_second")),
                eta_seconds=data.get("eta_seconds", metrics.get("eta_seconds")),
                rewards_margin=data.get("rewards_margin", metrics.get("rewards_margin")),
                rewards_accuracy=data.get("rewards_accuracy", metrics.get("rewards_accuracy")),
            )
            p = _progress(step, total)
            if p is not None:
                metrics["progress"] = p
            if isinstance(data.get("tokens_seen"), int):
                fields["trained_tokens"] = data["tokens_seen"]
        elif type_ == "eval":
            metrics = metrics or new_metrics()
            metrics["eval_loss"] = data.get("eval_loss")
            metrics["eval_token_accuracy"] = data.get("eval_token_accuracy")
            metrics["eval_rewards_margin"] = data.get("eval_rewards_margin")
            metrics["eval_rewards_accuracy"] = data.get("eval_rewards_accuracy")
        elif type_ == "checkpoint":
            if isinstance(data.get("path"), str):
                fields["checkpoint_path"] = data["path"]
        elif type_ in TERMINAL_TYPES and terminal is None:
            terminal = {"type": type_, "time": time_, **data}
            fields["terminal_record"] = terminal
            if type_ == "completed":
                metrics = metrics or new_metrics()
                total = data.get("total_steps", metrics.get("total_steps"))
                metrics.update(progress=1.0, current_step=total, total_steps=total, eta_seconds=0.0)
                if data.get("final_loss") is not None:
                    metrics["train_loss"] = data["final_loss"]
                if isinstance(data.get("adapter_path"), str):
                    fields["adapter_path"] = data["adapter_path"]
                if isinstance(data.get("tokens_seen"), int):
                    fields["trained_tokens"] = data["tokens_seen"]
            elif type_ == "interrupted" and isinstance(data.get("checkpoint_path"), str):
                fields["checkpoint_path"] = data["checkpoint_path"]
    if metrics is not None and metrics != row["metrics"]:
        fields["metrics"] = metrics
    return fields


def _epoch_in_progress(epoch: Any, total_epochs: Any) -> int | None:
    """The 1-based epoch in progress, an integer as the API documents ("Epoch 2/3"), from the trainer's
    fractional epoch (1.33 -> 2; exactly 1.0, the end of the first epoch -> 1)."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
        return None
    n = max(1, math.ceil(epoch - 1e-9))
    return min(n, total_epochs) if isinstance(total_epochs, int) and total_epochs > 0 else n


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def decide_outcome(
    row: dict[str, Any],
    *,
    exit_code: int | None,
    killed_by_us: bool,
    log_tail: list[str],
    lost_reason: str | None = None,
    lost_message: str | None = None,
    never_started: bool = False,
    grace_seconds: float = 0.0,
) -> tuple[JobStatus, str, dict[str, Any]]:
    """The final (status, message, row fields) of a job whose trainer is gone.

    The terminal record wins; without one the exit status speaks (a negative code is a signal); a job whose
    trainer ended unseen while the service was down fails with `lost_reason` (and a run its executor lost,
    with `executor_lost` and the executor's `lost_message`). `never_started`: stopped while the cluster
    still had it waiting for resources.
    """
    term = row["terminal_record"] or {}
    kind = term.get("type")
    cancel = row["cancel_requested_at"] is not None
    # A pause is a stop with a checkpoint, like a cancel that leaves the job resumable (a cancel during the
    # pause turned the job into `cancelling`: cancel wins).
    pause = row.get("status") == JobStatus.PAUSING.value and not cancel
    # max_runtime_seconds ran out and the run was asked to stop (supervisor): a failure that keeps its
    # checkpoint, for a resume. A cancel or pause asked for since wins.
    deadline = row.get("deadline_requested_at") is not None and not (cancel or pause)
    limit = (row.get("request") or {}).get("max_runtime_seconds")
    sig = -exit_code if exit_code is not None and exit_code < 0 else None
    code_out = exit_code if exit_code is not None and exit_code >= 0 else None
    # `accelerate launch` turns every non-zero child status into 1; the trainer's own protocol code (2 user
    # error, 3 out of memory, 4 interrupted) travels in its terminal record, so prefer that one.
    if isinstance(term.get("exit_code"), int):
        code_out = term["exit_code"]

    def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
        signal_name = None if sig is None else _signal_name(sig)
        return job_error(code, message, exit_code=code_out, signal=signal_name, log_tail=log_tail, **extra)

    if kind == "completed":
        req = row["request"]
        name = f"ft:{row['model']}:{req.get('suffix') or 'lora'}:{row['id']}"
        return (
            JobStatus.SUCCEEDED,
            "training completed",
            {
                "fine_tuned_model": name,
                "adapter_path": term.get("adapter_path") or row["adapter_path"],
                "error": None,
            },
        )
    if kind == "failed":
        extra = {k: v for k, v in term.items() if k in ("hint", "data_code", "line", "param")}
        code = str(term.get("code") or "training_error")
        message = str(term.get("message") or "the trainer reported a failure")
        return JobStatus.FAILED, message, {"error": error(code, message, **extra)}
    if kind == "interrupted":
        ckpt = term.get("checkpoint_path")
        if pause:
            step = term.get("step")
            return JobStatus.PAUSED, f"paused at step {step}; checkpoint saved at {ckpt}", {"error": None}
        if cancel:
            return JobStatus.CANCELLED, f"cancelled; checkpoint saved at {ckpt}", {}
        if deadline:
            message = (
                f"max_runtime_seconds ({limit} s) reached: stopped at step {term.get('step')} after saving "
                f"the checkpoint {ckpt}; resume the job to continue from it"
            )
            return (
                JobStatus.FAILED,
                message,
                {"error": error(DEADLINE_EXCEEDED, message, checkpoint_path=ckpt)},
            )
        message = "the trainer was interrupted by a signal that did not come from a cancel request" + (
            f"; its last checkpoint is {ckpt}" if ckpt else ""
        )
        return JobStatus.FAILED, message, {"error": error("interrupted", message, checkpoint_path=ckpt)}
    if lost_message is not None and (pause or cancel):
        # The executor lost the run during the stop: nothing says the trainer stopped, or saved anything. A
        # pause must not look done (a resume would start a second run beside it); a cancel stays a cancel.
        if cancel:
            return JobStatus.CANCELLED, f"cancelled; {lost_message}: the trainer may not have stopped", {}
        return JobStatus.FAILED, lost_message, {"error": error(lost_reason or "executor_lost", lost_message)}
    if never_started and (pause or cancel):
        what = "paused" if pause else "cancelled"
        return (
            JobStatus.PAUSED if pause else JobStatus.CANCELLED,
            f"{what} before it started: the cluster was still waiting for resources to run it",
            {"error": None} if pause else {},
        )
    if pause:
        return (
            JobStatus.PAUSED,
            "paused; the trainer stopped without saving a new checkpoint (resume starts from the newest one "
            "on disk, if any)",
            {"error": None},
        )
    if cancel:
        how = (
            f"killed after the {grace_seconds:g} s grace period"
            if killed_by_us
            else "it exited before saving a checkpoint"
        )
        return JobStatus.CANCELLED, f"cancelled; the trainer stopped without a checkpoint ({how})", {}
    if deadline:
        message = (
            f"max_runtime_seconds ({limit} s) reached: the trainer stopped without saving a checkpoint"
            + (f" (killed after the {grace_seconds:g} s grace period)" if killed_by_us else "")
            + "; a resume starts from the newest checkpoint on disk, if any"
        )
        return JobStatus.FAILED, message, {"error": error(DEADLINE_EXCEEDED, message)}
    if lost_reason is not None:
        message = lost_message or (
            "the service restarted and the trainer is no longer running; it left no final record"
            + (f" (last output: {log_tail[-1]!r})" if log_tail else "")
        )
        return JobStatus.FAILED, message, {"error": error(lost_reason, message)}
    if sig is not None:
        message = f"the trainer was killed by {_signal_name(sig)} without reporting a result"
        return JobStatus.FAILED, message, {"error": error("trainer_killed", message)}
    if exit_code is None:
        message = (
            "the trainer exited without reporting a result (exit status unknown: started by an earlier "
            "service process, or its executor did not say)"
        )
    else:
        message = f"the trainer exited with code {exit_code} without reporting a result"
    if log_tail:
        message += f"; last output: {log_tail[-1]!r}"
    return JobStatus.FAILED, message, {"error": error("trainer_crashed", message)}

"""Mapping of this service's objects to OpenAI's fine-tuning objects (docs/openai-compat.md).

Pure functions, no I/O: native jobs/records/checkpoints -> `fine_tuning.job`, `fine_tuning.job.event`,
`fine_tuning.job.checkpoint` (schema/openai.py defines them; an OpenAI create body becomes a native one in
`OpenAICreateJob.to_native`). Files need no mapping: the native file object already has OpenAI's fields
(plus a few of ours).
"""

from __future__ import annotations

import re
import time
from typing import Any

from ..errors import APIError
from ..schema.openai import BASE_LEARNING_RATE, CHECKPOINT_ID_PATTERN, EVENT_ID_PATTERN
from ..states import ACTIVE, JobStatus

_EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)
CHECKPOINT_ID_RE = re.compile(CHECKPOINT_ID_PATTERN)

# OpenAI has no "stopping" states: a job still runs until its trainer has checkpointed.
STATUS = {
    s.value: "running" if s in ACTIVE else "validating_files" if s == JobStatus.VALIDATING else s.value
    for s in JobStatus
}


def bad(param: str | None, message: str, code: str = "invalid_request") -> APIError:
    return APIError(400, code, message, param=param)


def openai_error(exc: APIError) -> APIError:
    """OpenAI reports invalid values as 400 (our 422), in the same envelope."""
    if exc.status_code != 422:
        return exc
    return APIError(400, exc.code, exc.message, param=exc.param, headers=exc.headers, extra=exc.extra)


# ---- objects ---------------------------------------------------------------------------------------------


_ACTIVE = frozenset(s.value for s in ACTIVE)


def fine_tuned_model(job: dict[str, Any], org: str) -> str | None:
    if job["status"] != "succeeded":
        return None
    return f"ft:{job['model']}:{org}:{job.get('suffix') or ''}:{job['id']}"


def openai_hyperparameters(hp: dict[str, Any]) -> dict[str, Any]:
    lr = hp.get("learning_rate")
    mult = round(lr / BASE_LEARNING_RATE, 6) if isinstance(lr, (int, float)) else "auto"
    return {"n_epochs": hp.get("epochs", "auto"), "batch_size": hp.get("batch_size", "auto"),
            "learning_rate_multiplier": mult}  # fmt: skip


def openai_method(job: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `method`: {"type": "supervised", "supervised": {...}} or {"type": "dpo", "dpo": {...}}, the
    hyperparameters under the type's name (a preference job's with its beta)."""
    if job["method"] == "sft":
        return {"type": "supervised", "supervised": {"hyperparameters": hp}}
    beta = (job.get("hyperparameters") or {}).get("dpo_beta", "auto")
    return {"type": job["method"], job["method"]: {"hyperparameters": {**hp, "beta": beta}}}


def openai_job(job: dict[str, Any], org: str) -> dict[str, Any]:
    """A native job (docs/api.md) -> OpenAI's `fine_tuning.job`."""
    hp = openai_hyperparameters(job.get("hyperparameters") or {})
    err = job.get("error")
    metrics = job.get("metrics") or {}
    eta = metrics.get("eta_seconds")
    running = job["status"] in _ACTIVE
    return {
        "object": "fine_tuning.job",
        "id": job["id"],
        "model": job["model"],
        "created_at": job["created_at"],
        "finished_at": job["finished_at"],
        "fine_tuned_model": fine_tuned_model(job, org),
        "organization_id": org,
        "result_files": [],
        "status": STATUS.get(job["status"], job["status"]),
        "training_file": job["training_file"],
        "validation_file": job["validation_file"],
        "hyperparameters": hp,
        "trained_tokens": job["trained_tokens"],
        "error": None
        if err is None
        else {"code": err.get("code"), "message": err.get("message"), "param": err.get("param")},
        "seed": job["seed"],
        "estimated_finish": int(time.time() + eta) if running and isinstance(eta, (int, float)) else None,
        "integrations": job.get("integrations") or [],
        "metadata": job.get("metadata") or None,
        "user_provided_suffix": job.get("suffix"),
        "method": openai_method(job, hp),
        # What OpenAI's object has no field for: our status, the adapter type and the live metrics.
        "tuning": {
            "status": job["status"],
            "method": job["method"],
            "adapter": job["adapter"],
            "from_checkpoint": job.get("from_checkpoint"),
            "metrics": job.get("metrics"),
            "num_gpus": job["num_gpus"],
            "distributed": job["distributed"],
            "priority": job.get("priority", 0),
            "max_runtime_seconds": job.get("max_runtime_seconds"),
            "auto_retry": job.get("auto_retry", 0),
            "retries": job.get("retries", 0),
        },
    }


def event_id(job_id: str, seq: int) -> str:
    return f"ftevent-{job_id.removeprefix('ftjob-')}-{seq}"


def parse_event_id(job_id: str, value: str) -> int | None:
    """The seq of an event id of this job; None for a well-formed id of another job (a cursor that matches
    nothing here: an empty page, as for the list routes); 400 for anything that is not an event id."""
    if not _EVENT_ID_RE.match(value):
        raise bad("after", f"after must be an event id (ftevent-<job>-<N>), got {value[:80]!r}")
    prefix = f"ftevent-{job_id.removeprefix('ftjob-')}-"
    tail = value[len(prefix) :] if value.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def openai_event(job_id: str, rec: dict[str, Any]) -> dict[str, Any]:
    """A native record -> OpenAI's `fine_tuning.job.event` (`data` keeps the record's fields)."""
    kind = rec["type"]
    level, etype = "info", "message"
    data = {k: v for k, v in rec.items() if k not in ("seq", "time", "config", "versions")}
    if kind == "status":
        status = str(rec.get("status"))
        message = f"Job status: {STATUS.get(status, status)}" + (
            f" ({status})" if STATUS.get(status) != status else ""
        )
        if rec.get("message"):
            message += f": {rec['message']}"
        level = "error" if status == "failed" else "info"
    elif kind == "started":
        start = rec.get("start_step") or 0
        message = (
            f"Training resumed at step {start} of {rec.get('total_steps')}"
            if start
            else f"Training started: {rec.get('total_steps')} steps, {rec.get('num_examples')} examples"
        )
    elif kind == "metrics":
        etype = "metrics"
        message = f"Step {rec.get('step')}/{rec.get('total_steps')}: training loss={_num(rec.get('loss'))}"
        data = {"step": rec.get("step"), "total_steps": rec.get("total_steps"), "train_loss": rec.get("loss"),
                "learning_rate": rec.get("learning_rate"), "epoch": rec.get("epoch"),
                "tokens_per_second": rec.get("tokens_per_second")}  # fmt: skip
    elif kind == "eval":
        etype = "metrics"
        message = f"Step {rec.get('step')}: validation loss={_num(rec.get('eval_loss'))}"
        data = {"step": rec.get("step"), "valid_loss": rec.get("eval_loss"), "epoch": rec.get("epoch")}
    elif kind == "checkpoint":
        message = f"Checkpoint saved at step {rec.get('step')}"
        data = {"step": rec.get("step")}
    elif kind == "resumed_after_restart":
        level = "warn"
        step = rec.get("step")
        message = f"The service restarted without the trainer: resuming from the checkpoint of step {step}"
    elif kind == "completed":
        message = f"Training completed: final training loss={_num(rec.get('final_loss'))}"
        data.pop("adapter_path", None)
    elif kind == "failed":
        level = "error"
        message = f"Training failed ({rec.get('code')}): {rec.get('message')}"
    elif kind == "interrupted":
        level = "warn"
        message = f"Trainer stopped at step {rec.get('step')} by {rec.get('signal')}; checkpoint saved"
        data.pop("checkpoint_path", None)
    else:
        message = str(rec.get("line") or kind)
    return {
        "object": "fine_tuning.job.event",
        "id": event_id(job_id, int(rec["seq"])),
        "created_at": int(rec["time"]),
        "level": level,
        "message": message,
        "data": data,
        "type": etype,
    }


def checkpoint_id(job_id: str, step: int) -> str:
    return f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}"


def openai_checkpoint(job: dict[str, Any], org: str, ckpt: dict[str, Any]) -> dict[str, Any]:
    m = ckpt.get("metrics") or {}
    step = int(ckpt["step"])
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": checkpoint_id(job["id"], step),
        "created_at": ckpt["created_at"],
        "fine_tuned_model_checkpoint": f"ft:{job['model']}:{org}:{job.get('suffix') or ''}:{job['id']}"
        f":ckpt-step-{step}",
        "fine_tuning_job_id": job["id"],
        "step_number": step,
        "metrics": {
            "step": step,
            # The trainer evaluates on the whole validation file, so "valid" and "full valid" are one value.
            "train_loss": m.get("train_loss"),
            "valid_loss": m.get("eval_loss"),
            "full_valid_loss": m.get("eval_loss"),
            "train_mean_token_accuracy": m.get("train_token_accuracy"),
            "valid_mean_token_accuracy": m.get("eval_token_accuracy"),
            "full_valid_mean_token_accuracy": m.get("eval_token_accuracy"),
        },
    }

"""Mapping between OpenAI's fine-tuning API objects and this service's (docs/openai-compat.md).

Pure functions, no I/O: OpenAI create bodies -> native create bodies, native jobs/records/checkpoints ->
`fine_tuning.job`, `fine_tuning.job.event`, `fine_tuning.job.checkpoint`. Files need no mapping: the native
file object already has OpenAI's fields (plus a few of ours).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

from tuning_trainer.config import Hyperparameters

from ..errors import APIError

# Our default learning rate: learning_rate_multiplier scales it (the result is at most 1, like ours).
BASE_LEARNING_RATE = Hyperparameters().learning_rate
MAX_LEARNING_RATE_MULTIPLIER = 1 / BASE_LEARNING_RATE
# Cursor ids (OpenAPI patterns, openapi_extra.py): `ftevent-<job>-<seq>` and `ftckpt-<job>-<step>`. The number
# is bounded so that it always fits SQLite's 64-bit integers.
EVENT_ID_PATTERN = r"^ftevent-[A-Za-z0-9_-]+-[0-9]{1,18}$"
CHECKPOINT_ID_PATTERN = r"^ftckpt-[A-Za-z0-9_-]+-[0-9]{1,18}$"
_EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)
CHECKPOINT_ID_RE = re.compile(CHECKPOINT_ID_PATTERN)
NATIVE_HYPERPARAMETERS = frozenset(f.name for f in dataclasses.fields(Hyperparameters))

CREATE_FIELDS = (
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "seed",
    "metadata",
    "integrations",
    "tuning_method",  # extension: "qlora" (default) or "lora"
    "resume_on_restart",  # extension: continue from the newest checkpoint after a service restart
)

STATUS = {
    "validating": "validating_files",
    "queued": "queued",
    "running": "running",
    # OpenAI has no "stopping" states: the job still runs until the trainer has checkpointed.
    "cancelling": "running",
    "pausing": "running",
    "paused": "paused",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}

# Native error params -> the names an OpenAI client sent.
_PARAMS = {
    "hyperparameters.epochs": "hyperparameters.n_epochs",
    "hyperparameters.learning_rate": "hyperparameters.learning_rate_multiplier",
    "method": "tuning_method",
}


def bad(param: str | None, message: str, code: str = "invalid_request") -> APIError:
    return APIError(400, code, message, param=param)


def openai_error(exc: APIError) -> APIError:
    """OpenAI reports invalid values as 400 (our 422) and names fields as the client sent them."""
    status = 400 if exc.status_code == 422 else exc.status_code
    param = _PARAMS.get(exc.param or "", exc.param)
    return APIError(status, exc.code, exc.message, param=param, headers=exc.headers, extra=exc.extra)


# ---- create ----------------------------------------------------------------------------------------------


def _auto_or_int(value: Any, param: str) -> Any:
    if value == "auto":
        return "auto"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 2.0 is the integer 2 in JSON (and in JSON Schema), as for the native seed
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(param, f"{param} must be an integer or 'auto', got {value!r}")
    return value


def map_hyperparameters(raw: Any, param: str) -> dict[str, Any]:
    """OpenAI's {n_epochs, batch_size, learning_rate_multiplier} (each a number or "auto") -> ours. Our own
    names (max_steps, lora_r, ...) are accepted too, as an extension."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad(param, f"{param} must be an object, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{param}.{key}"
        if key == "n_epochs":
            out["epochs"] = _auto_or_int(value, name)
        elif key == "batch_size":
            out["batch_size"] = _auto_or_int(value, name)
        elif key == "learning_rate_multiplier":
            if "learning_rate" in raw:
                raise bad(name, f"give either {name} or {param}.learning_rate, not both")
            if value == "auto":
                continue  # our default learning rate
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, f"{name} must be a positive number or 'auto', got {value!r}")
            if not 0 < value <= MAX_LEARNING_RATE_MULTIPLIER:
                raise bad(
                    name,
                    f"{name} must be in (0, {MAX_LEARNING_RATE_MULTIPLIER:g}] (a learning rate of at most 1 "
                    f"with the base rate {BASE_LEARNING_RATE:g}), got {value!r}",
                    code="invalid_hyperparameter",
                )
            out["learning_rate"] = min(1.0, value * BASE_LEARNING_RATE)
        elif key in ("epochs",):
            raise bad(name, f"unknown hyperparameter {key!r}: OpenAI's name is n_epochs")
        elif key in NATIVE_HYPERPARAMETERS:
            out[key] = value
        else:
            allowed = "n_epochs, batch_size, learning_rate_multiplier (and this service's own: see /docs)"
            raise bad(name, f"unknown hyperparameter {key!r}; supported: {allowed}")
    return out


def native_create_body(body: Any) -> dict[str, Any]:
    """An OpenAI `POST /v1/fine_tuning/jobs` body -> a `/v1/tunings.create` body (then validated as usual)."""
    if not isinstance(body, dict):
        raise bad(None, f"Request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(CREATE_FIELDS))
    if unknown:
        raise bad(unknown[0], f"Unknown field {unknown[0]!r}; supported: {', '.join(CREATE_FIELDS)}")
    integrations = body.get("integrations")
    if integrations is not None and not isinstance(integrations, list):
        raise bad("integrations", f"integrations must be a list, got {type(integrations).__name__}")
    if integrations:
        raise bad(
            "integrations",
            "integrations (e.g. wandb) are not supported by this service; follow training with the job's "
            "events or /v1/tunings.logs",
            code="unsupported_integration",
        )
    hyper = map_hyperparameters(body.get("hyperparameters"), "hyperparameters")
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict):
            raise bad("method", f"method must be an object, got {type(method).__name__}")
        kind = method.get("type", "supervised")
        if kind != "supervised":
            raise bad(
                "method.type",
                f"method type {kind!r} is not supported: this service trains LoRA/QLoRA adapters with "
                'supervised fine-tuning only; use {"type": "supervised"}',
                code="unsupported_method",
            )
        extra = sorted(set(method) - {"type", "supervised"})
        if extra:
            raise bad(
                f"method.{extra[0]}", f"method.{extra[0]} is not supported with method type 'supervised'"
            )
        supervised = method.get("supervised")
        if supervised is None:
            supervised = {}
        if not isinstance(supervised, dict):
            raise bad("method.supervised", "method.supervised must be an object")
        hyper.update(
            map_hyperparameters(supervised.get("hyperparameters"), "method.supervised.hyperparameters")
        )
    native: dict[str, Any] = {
        "model": body.get("model"),
        "training_file": body.get("training_file"),
        "hyperparameters": hyper,
    }
    for name in ("validation_file", "suffix", "seed", "metadata"):
        if body.get(name) is not None:
            native[name] = body[name]
    if body.get("tuning_method") is not None:
        native["method"] = body["tuning_method"]
    if body.get("resume_on_restart") is not None:
        native["resume_on_restart"] = body["resume_on_restart"]
    return native


# ---- objects ---------------------------------------------------------------------------------------------


def fine_tuned_model(job: dict[str, Any], org: str) -> str | None:
    if job["status"] != "succeeded":
        return None
    return f"ft:{job['model']}:{org}:{job.get('suffix') or ''}:{job['id']}"


def openai_hyperparameters(hp: dict[str, Any]) -> dict[str, Any]:
    lr = hp.get("learning_rate")
    mult = round(lr / BASE_LEARNING_RATE, 6) if isinstance(lr, (int, float)) else "auto"
    return {"n_epochs": hp.get("epochs", "auto"), "batch_size": hp.get("batch_size", "auto"),
            "learning_rate_multiplier": mult}  # fmt: skip


def openai_job(job: dict[str, Any], org: str) -> dict[str, Any]:
    """A native job (docs/api.md) -> OpenAI's `fine_tuning.job`."""
    hp = openai_hyperparameters(job.get("hyperparameters") or {})
    err = job.get("error")
    metrics = job.get("metrics") or {}
    eta = metrics.get("eta_seconds")
    running = job["status"] in ("running", "cancelling", "pausing")
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
        "integrations": [],
        "metadata": job.get("metadata") or None,
        "user_provided_suffix": job.get("suffix"),
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        # What OpenAI's object has no field for: our status, the adapter type and the live metrics.
        "tuning": {"status": job["status"], "method": job["method"], "metrics": job.get("metrics")},
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
            "train_loss": m.get("train_loss"),
            "valid_loss": m.get("eval_loss"),
            "full_valid_loss": None,
            "train_mean_token_accuracy": None,
            "valid_mean_token_accuracy": None,
            "full_valid_mean_token_accuracy": None,
        },
    }

"""The API's objects as the service defines them, for the SDK's stub tests.

The SDK's tests used to hand-write job, file, record and checkpoint dicts, and nothing said they looked like
what the service sends (a `signal` number, a `log_tail` string: the SDK was tested against shapes the service
never produced). Here every fixture is built by a factory that validates it with the service's own
`ResponseModel` (tuning_service.schema, the source of `/openapi.json`), and the stub server checks every JSON
body it answers with against the model of the route it serves (`conformance_problem`). Tests may import the
service; the SDK itself may not (tests/sdk/test_packaging.py).

A fixture that is off the contract on purpose (an SDK's tolerance of a newer or broken server) says so:
``reply(..., conform=False)`` / ``h.send_json(..., conform=False)``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field, RootModel, ValidationError

from tuning_service.schema import files as file_schema
from tuning_service.schema import inference as inference_schema
from tuning_service.schema import jobs as job_schema
from tuning_service.schema import usage as usage_schema
from tuning_trainer.config import Hyperparameters

M = TypeVar("M", bound=BaseModel)

CREATED_AT = 1764150000

# The model of each route's 200 JSON body, as the document lists it (test_contract.py checks this table
# against the running service's /openapi.json). A key ending in "/" is a prefix: the route takes an id.
# A create answers a job, or with "dry_run": true an estimate (the document's oneOf).
CreateAnswer = RootModel[
    Annotated[job_schema.TuningJob | job_schema.TuningEstimate, Field(union_mode="left_to_right")]
]
CreateAnswer.__name__ = "TuningJob|TuningEstimate"
# A chat completion, or (the document lists it with the answer) the chunks of a streamed one: the stub's JSON
# answers are the former, its event streams send the latter (`chat_chunk_body`).
ChatAnswer = RootModel[
    Annotated[
        inference_schema.ChatCompletion | inference_schema.ChatCompletionChunk,
        Field(union_mode="left_to_right"),
    ]
]
ChatAnswer.__name__ = "ChatCompletion|ChatCompletionChunk"
RESPONSE_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/v1/tunings.create"): CreateAnswer,
    ("GET", "/v1/tunings.get/"): job_schema.TuningJob,
    ("POST", "/v1/tunings.cancel/"): job_schema.TuningJob,
    ("POST", "/v1/tunings.pause/"): job_schema.TuningJob,
    ("POST", "/v1/tunings.resume/"): job_schema.TuningJob,
    ("GET", "/v1/tunings.list"): job_schema.TuningJobList,
    ("DELETE", "/v1/tunings.delete/"): job_schema.DeletedTuningJob,
    # Without ?follow=true; a followed log is an event stream (its records: `record`).
    ("GET", "/v1/tunings.logs/"): job_schema.LogPage,
    ("GET", "/v1/tunings.events/"): job_schema.LogPage,
    ("GET", "/v1/tunings.checkpoints/"): job_schema.CheckpointList,
    ("POST", "/v1/files.upload"): file_schema.File,
    ("GET", "/v1/files.get/"): file_schema.File,
    ("GET", "/v1/files.list"): file_schema.FileList,
    ("DELETE", "/v1/files.delete/"): file_schema.DeletedFile,
    ("GET", "/health"): job_schema.Health,
    ("GET", "/v1/usage"): usage_schema.KeyUsage,
    # The inference routes (OpenAI's shapes). A model id may hold "/": `/v1/models/{model:path}`. A chat
    # completion or completion with "stream": true is an event stream (its chunks: `chat_chunk_body`,
    # `completion_body`).
    ("GET", "/v1/models"): inference_schema.ModelList,
    ("GET", "/v1/models/"): inference_schema.Model,
    ("DELETE", "/v1/models/"): inference_schema.DeletedModel,
    ("POST", "/v1/chat/completions"): ChatAnswer,
    ("POST", "/v1/completions"): inference_schema.Completion,
}


def validate(model: type[M], body: Any) -> M:
    """`body` as the service's `model` reads it off the wire (JSON, strict: "queued" is a JobStatus there)."""
    return model.model_validate_json(json.dumps(body, allow_nan=False))


def conform(model: type[BaseModel], body: dict[str, Any]) -> dict[str, Any]:
    """`body`, after checking that the service could have sent it as a `model` (raises ValidationError)."""
    validate(model, body)
    return body


def response_model(method: str, path: str) -> type[BaseModel] | None:
    for (m, route), model in RESPONSE_MODELS.items():
        if m == method and (path == route or (route.endswith("/") and path.startswith(route))):
            return model
    return None


def conformance_problem(method: str, path: str, status: int, body: Any) -> str | None:
    """Why a stub's answer is not something the service could send on this route (None when it could).
    Only success bodies are checked: error envelopes and non-JSON answers are the transport tests'
    business."""
    model = response_model(method, path)
    if model is None or not 200 <= status < 300 or body is None:
        return None
    try:
        validate(model, body)
    except ValidationError as exc:
        return f"{method} {path} answered a body that is not a {model.__name__}: {exc}"
    return None


# ---- factories: complete objects, defaults as the service fills them in -----------------------------------


def hyperparameters_body(**values: Any) -> dict[str, Any]:
    """Every hyperparameter, as a job carries them (the service sends the requested values with its defaults
    filled in)."""
    return Hyperparameters(**values).model_dump(mode="json")


def metrics_body(**fields: Any) -> dict[str, Any]:
    """A job's `metrics`: each value None until reported, progress 0.0."""
    body: dict[str, Any] = {**dict.fromkeys(job_schema.TrainingMetrics.model_fields), "progress": 0.0}
    body.update(fields)
    return conform(job_schema.TrainingMetrics, body)


def job_error_body(
    code: str = "training_error", message: str = "training failed", **fields: Any
) -> dict[str, Any]:
    """A failed job's `error`."""
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "param": None,
        "exit_code": None,
        "signal": None,
        "log_tail": [],
    }
    body.update(fields)
    return conform(job_schema.JobError, body)


def job_body(job_id: str = "ftjob-1", status: str = "queued", **fields: Any) -> dict[str, Any]:
    """A job object in `status`; `fields` replace any field (and are validated with the rest)."""
    body: dict[str, Any] = {
        "id": job_id,
        "object": "tuning.job",
        "status": status,
        "model": "tiny-llama",
        "fine_tuned_model": None,
        "adapter_path": None,
        "training_file": "data/train.jsonl",
        "validation_file": None,
        "method": "sft",
        "adapter": "qlora",
        "from_checkpoint": None,
        "hyperparameters": hyperparameters_body(epochs=1),
        "suffix": None,
        "seed": 42,
        "metadata": {},
        "resume_on_restart": False,
        "num_gpus": 1,
        "distributed": "ddp",
        "created_at": CREATED_AT,
        "started_at": None,
        "finished_at": None,
        "duration": None,
        "queue_position": None,
        "trained_tokens": None,
        "error": None,
        "metrics": None,
        "integrations": [],
        "priority": 0,
        "max_runtime_seconds": None,
        "auto_retry": 0,
        "retries": 0,
    }
    body.update(fields)
    return conform(job_schema.TuningJob, body)


def estimate_body(**fields: Any) -> dict[str, Any]:
    """A dry run's answer (tuning.estimate); `fields` replace any field."""
    body: dict[str, Any] = {
        "object": "tuning.estimate",
        "model": "tiny-llama",
        "method": "sft",
        "adapter": "lora",
        "num_examples": 300,
        "num_eval_examples": 0,
        "num_tokens": 11399,
        "trainable_tokens": 3474,
        "truncated_examples": 2,
        "dropped_examples": 0,
        "resolved_auto": {"epochs": 5, "batch_size": 4},
        "total_steps": 15,
        "total_epochs": 5,
        "steps_per_epoch": 3,
        "padding_efficiency": 0.8147,
        "micro_batch_tokens": 4664,
        "attn_implementation": "sdpa",
        "device": "cpu",
        "num_processes": 1,
        "gradient_checkpointing": False,
        "tokens_to_process": 56995,
        "hyperparameters": hyperparameters_body(epochs=5, batch_size=4),
        "shape": {"hidden": 64, "layers": 2, "vocab": 512},
        "memory": {
            "peak_mb": 54,
            "device_mb": 24105,
            "fits": True,
            "breakdown_mb": {"weights": 0, "loss": 8},
        },
        "estimated_seconds": None,
        "based_on_jobs": 0,
    }
    body.update(fields)
    return conform(job_schema.TuningEstimate, body)


def job_list_body(jobs: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return conform(
        job_schema.TuningJobList,
        {
            "object": "list",
            "data": jobs,
            "has_more": has_more,
            "first_id": jobs[0]["id"] if jobs else None,
            "last_id": jobs[-1]["id"] if jobs else None,
        },
    )


def record(seq: int, type_: str, time: float | None = None, **fields: Any) -> dict[str, Any]:
    """One record of a job's log (`time` defaults to one second per seq)."""
    body = {"seq": seq, "type": type_, "time": float(seq) if time is None else time, **fields}
    return conform(job_schema.LogRecord, body)


def log_page(records: list[dict[str, Any]], has_more: bool = False, after: int = 0) -> dict[str, Any]:
    """A page of records (logs or events) asked for with `?after=`: `last_seq` is the page's last record's,
    or `after` on an empty page, as the service says."""
    last_seq = records[-1]["seq"] if records else after
    return conform(
        job_schema.LogPage, {"object": "list", "data": records, "has_more": has_more, "last_seq": last_seq}
    )


def checkpoint_body(step: int, job_id: str = "ftjob-1", **metrics: Any) -> dict[str, Any]:
    """A checkpoint at `step`; `metrics` replace the values at that step (all None but `step` otherwise)."""
    values: dict[str, Any] = {**dict.fromkeys(job_schema.CheckpointMetrics.model_fields), "step": step}
    values.update(metrics)
    return conform(
        job_schema.Checkpoint,
        {
            "object": "tuning.checkpoint",
            "id": f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}",  # the service's: a from_checkpoint
            "job_id": job_id,
            "step": step,
            "created_at": CREATED_AT + step,
            "path": f"checkpoints/checkpoint-{step}",
            "metrics": values,
        },
    )


def checkpoint_list(checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return conform(job_schema.CheckpointList, {"object": "list", "data": checkpoints, "has_more": False})


def deleted_job_body(job_id: str = "ftjob-1") -> dict[str, Any]:
    return conform(job_schema.DeletedTuningJob, {"id": job_id, "object": "tuning.job", "deleted": True})


def file_body(file_id: str = "file-1", status: str = "processed", **fields: Any) -> dict[str, Any]:
    """A file object; `status="error"` gets an error (replace it with `error=file_error_body(...)`)."""
    body: dict[str, Any] = {
        "id": file_id,
        "object": "file",
        "bytes": 270,
        "created_at": CREATED_AT,
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "status": status,
        "status_details": None,
        "format": "chat",
        "num_examples": 3,
        "error": None,
    }
    if status == "error":
        err = file_error_body()
        body.update(status_details=err["message"], format=None, num_examples=None, error=err)
    body.update(fields)
    return conform(file_schema.File, body)


def file_error_body(
    code: str = "invalid_json", message: str = "not valid JSON", line: int | None = 1
) -> dict[str, Any]:
    return conform(file_schema.FileError, {"code": code, "message": message, "line": line})


def file_list_body(files: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return conform(
        file_schema.FileList,
        {
            "object": "list",
            "data": files,
            "has_more": has_more,
            "first_id": files[0]["id"] if files else None,
            "last_id": files[-1]["id"] if files else None,
        },
    )


def deleted_file_body(file_id: str = "file-1") -> dict[str, Any]:
    return conform(file_schema.DeletedFile, {"id": file_id, "object": "file", "deleted": True})


def health_body(version: str = "1", **counts: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "healthy",
        "version": version,
        "uptime": 1.5,
        "active_jobs": 0,
        "running_jobs": 0,
        "queued_jobs": 0,
        "paused_jobs": 0,
        "total_jobs": 0,
    }
    body.update(counts)
    return conform(job_schema.Health, body)


def key_usage_body(**fields: Any) -> dict[str, Any]:
    """GET /v1/usage's answer: a key without limits that has run nothing; `fields` replace any field (a
    `limits` given in part keeps the other limits null)."""
    limits: dict[str, Any] = {"max_running_jobs": None, "max_queued_jobs": None, "max_gpu_hours": None}
    limits.update(fields.pop("limits", {}))
    body: dict[str, Any] = {
        "object": "usage",
        "key_id": "key_0123456789abcdef",
        "running_jobs": 0,
        "queued_jobs": 0,
        "gpu_hours": 0.0,
        "window_days": 30.0,
        "limits": limits,
    }
    body.update(fields)
    return conform(usage_schema.KeyUsage, body)


# ---- inference: models, chat completions, completions ----------------------------------------------------

FINE_TUNE_ID = "ft:meta-llama/Llama-2-7b-hf:key_ab12:demo:ftjob-abc"


def model_body(model_id: str = "tiny-llama", **fields: Any) -> dict[str, Any]:
    """A model object: a base model, or (with `parent=`) a fine-tune owned by a key."""
    body: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "created": CREATED_AT,
        "owned_by": "system",
        "parent": None,
        "job_id": None,
        "method": None,
        "adapter": None,
    }
    body.update(fields)
    return conform(inference_schema.Model, body)


def fine_tune_body(
    model_id: str = FINE_TUNE_ID, parent: str = "meta-llama/Llama-2-7b-hf", **fields: Any
) -> dict[str, Any]:
    body = {
        "owned_by": "key_ab12",
        "parent": parent,
        "job_id": "ftjob-abc",
        "method": "sft",
        "adapter": "qlora",
        **fields,
    }
    return model_body(model_id, **body)


def model_list_body(models: list[dict[str, Any]]) -> dict[str, Any]:
    return conform(inference_schema.ModelList, {"object": "list", "data": models})


def deleted_model_body(model_id: str = FINE_TUNE_ID) -> dict[str, Any]:
    return conform(inference_schema.DeletedModel, {"id": model_id, "object": "model", "deleted": True})


def usage_body(prompt_tokens: int = 5, completion_tokens: int = 3) -> dict[str, Any]:
    return conform(
        inference_schema.Usage,
        {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


def token_logprob_body(token: str, logprob: float, top: dict[str, float] | None = None) -> dict[str, Any]:
    """A chat token's log probability, with its alternatives (`top`: token -> log probability)."""
    tops = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in (top or {}).items()]
    return conform(
        inference_schema.TokenLogprob,
        {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": tops},
    )


def chat_completion_body(
    content: str = "Hello there!", model: str = "tiny-llama", **fields: Any
) -> dict[str, Any]:
    """A (non-streamed) chat completion with one choice; `fields` replace any field."""
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": CREATED_AT,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage_body(),
        "system_fingerprint": "fp_tuning",
    }
    body.update(fields)
    return conform(inference_schema.ChatCompletion, body)


def chat_chunk_body(
    content: str | None = None,
    *,
    role: str | None = None,
    finish_reason: str | None = None,
    model: str = "tiny-llama",
    choices: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One chunk of a streamed chat completion: a delta of `content` (and `role`) for choice 0."""
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    if choices is None:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": CREATED_AT,
        "model": model,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": "fp_tuning",
    }
    return conform(inference_schema.ChatCompletionChunk, body)


def completion_body(
    text: str = " a king.",
    model: str = "tiny-llama",
    *,
    finish_reason: str | None = "length",
    logprobs: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A completion (or, with `usage=None` and `finish_reason=None`, a streamed chunk of one)."""
    body: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": CREATED_AT,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}],
        "usage": usage,
        "system_fingerprint": "fp_tuning",
    }
    body.update(fields)
    return conform(inference_schema.Completion, body)


def sse(*events: dict[str, Any] | str, done: bool = True) -> str:
    """Events as the service streams them: `data: {json}` and a blank line each, then `data: [DONE]`."""
    text = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
    return text + ("data: [DONE]\n\n" if done else "")

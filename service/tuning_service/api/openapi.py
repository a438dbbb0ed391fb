"""The OpenAPI 3.1 document (`GET /openapi.json`), written out by hand from docs/api.md.

Starlette has no schema generation of its own worth having here; a literal document keeps the contract in one
readable place. tests/service/test_openapi.py checks that every route of the app is described.
"""

from __future__ import annotations

from typing import Any

# Printable ASCII without leading/trailing spaces (HTTP strips those): shared with requests.py.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
# = webhooks.EVENTS (kept literal here: this module imports nothing of the service; a test compares them)
WEBHOOK_EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "job.checkpoint")
STATUSES = [
    "validating",
    "queued",
    "running",
    "cancelling",
    "pausing",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_HYPERPARAMETERS: dict[str, Any] = {
    "type": "object",
    "description": "Training hyperparameters (the trainer's schema; unknown names are refused).",
    "additionalProperties": False,
    "properties": {
        "epochs": {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 1000}, {"const": "auto"}],
            "default": "auto",
        },
        "learning_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.0002},
        "batch_size": {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 4096}, {"const": "auto"}],
            "default": "auto",
        },
        "gradient_accumulation_steps": {"type": "integer", "minimum": 1, "default": 1},
        "warmup_ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.03},
        "lr_scheduler_type": {
            "enum": [
                "linear",
                "cosine",
                "constant",
                "constant_with_warmup",
                "polynomial",
                "cosine_with_restarts",
            ],
            "default": "cosine",
        },
        "weight_decay": {"type": "number", "minimum": 0, "default": 0.0},
        "max_grad_norm": {"type": "number", "minimum": 0, "default": 1.0},
        "max_seq_length": {"type": "integer", "minimum": 8, "default": 1024},
        "max_steps": _nullable({"type": "integer", "minimum": 1}),
        "lora_r": {"type": "integer", "minimum": 1, "default": 16},
        "lora_alpha": {"type": "integer", "minimum": 1, "default": 32},
        "lora_dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.05},
        "lora_target_modules": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "default": "all-linear",
        },
        "train_on_inputs": {"type": "boolean", "default": False},
        "eval_steps": _nullable({"type": "integer", "minimum": 1}),
        "save_steps": _nullable({"type": "integer", "minimum": 1}),
        "logging_steps": {"type": "integer", "minimum": 1, "default": 1},
        "gradient_checkpointing": _nullable({"type": "boolean"}),
        "packing": {"type": "boolean", "default": False},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "type"],
                "properties": {
                    "code": {"type": "string", "examples": ["invalid_hyperparameter"]},
                    "message": {"type": "string"},
                    "param": _nullable({"type": "string"}),
                    "type": {"type": "string", "examples": ["invalid_request_error"]},
                    "line": _nullable(
                        {"type": "integer", "description": "1-based line of a data-file error"}
                    ),
                },
            }
        },
    },
    "Hyperparameters": _HYPERPARAMETERS,
    "CreateTuningRequest": {
        "type": "object",
        "required": ["model", "training_file"],
        "additionalProperties": False,
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "description": "A folder under TUNING_MODELS_DIR or a hub id",
                "examples": ["tiny-llama", "meta-llama/Llama-2-7b-hf"],
            },
            "training_file": {
                "type": "string",
                "minLength": 1,
                "description": "JSONL path relative to TUNING_FILES_ROOT",
                "examples": ["data/train.jsonl"],
            },
            "validation_file": _nullable({"type": "string"}),
            # Optional fields may also be sent as null, meaning "the default".
            "hyperparameters": _nullable(_ref("Hyperparameters")),
            "method": _nullable({"enum": ["qlora", "lora"], "default": "qlora"}),
            "suffix": _nullable(
                {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"}
            ),
            "seed": _nullable({"type": "integer", "minimum": 0, "maximum": 2**32 - 1, "default": 42}),
            "metadata": _nullable(
                {
                    "type": "object",
                    "maxProperties": 16,
                    "propertyNames": {"maxLength": 64},
                    "additionalProperties": {"type": "string", "maxLength": 512},
                }
            ),
            "webhook_url": _nullable(
                {
                    "type": "string",
                    "format": "uri",
                    "maxLength": 2048,
                    "pattern": "^https?://",
                    "description": "POSTed a signed event when the job ends (see docs/api.md, Webhooks); "
                    "private and loopback addresses are refused unless TUNING_WEBHOOK_ALLOW_NETWORKS allows "
                    "them",
                }
            ),
            "webhook_events": _nullable(
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {"enum": list(WEBHOOK_EVENTS)},
                    "description": "Events sent to webhook_url (default: the three terminal ones)",
                }
            ),
            "resume_on_restart": _nullable(
                {
                    "type": "boolean",
                    "default": False,
                    "description": "If the service restarts and the trainer is gone with it, queue the job "
                    "again to continue from its newest checkpoint (instead of failing with "
                    "`service_restart`); set hyperparameters.save_steps to have checkpoints to resume from",
                }
            ),
        },
        "examples": [
            {
                "model": "meta-llama/Llama-2-7b-hf",
                "training_file": "data/train.jsonl",
                "hyperparameters": {"epochs": 3, "learning_rate": 0.0002, "batch_size": 4},
            }
        ],
    },
    "JobError": {
        "type": "object",
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "param": _nullable({"type": "string"}),
            "exit_code": _nullable({"type": "integer"}),
            "signal": _nullable({"type": "string"}),
            "log_tail": _nullable({"type": "array", "items": {"type": "string"}}),
        },
    },
    "TrainingMetrics": {
        "type": "object",
        "properties": {
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "current_step": {"type": "integer"},
            "total_steps": _nullable({"type": "integer"}),
            "current_epoch": _nullable({"type": "number"}),
            "total_epochs": _nullable({"type": "integer"}),
            "train_loss": _nullable({"type": "number"}),
            "eval_loss": _nullable({"type": "number"}),
            "learning_rate": _nullable({"type": "number"}),
            "tokens_per_second": _nullable({"type": "number"}),
            "eta_seconds": _nullable({"type": "number"}),
        },
    },
    "TuningJob": {
        "type": "object",
        "required": ["id", "object", "status", "model", "training_file", "created_at"],
        "properties": {
            "id": {"type": "string", "examples": ["ftjob-3f2c9a0e8b7d4c1a9e6f0b2d"]},
            "object": {"const": "tuning.job"},
            "status": {"enum": STATUSES},
            "model": {"type": "string"},
            "fine_tuned_model": _nullable({"type": "string"}),
            "adapter_path": _nullable({"type": "string"}),
            "training_file": {"type": "string"},
            "validation_file": _nullable({"type": "string"}),
            "method": {"enum": ["qlora", "lora"]},
            "hyperparameters": {"type": "object", "description": "Resolved once the trainer starts"},
            "suffix": _nullable({"type": "string"}),
            "seed": {"type": "integer"},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "resume_on_restart": {"type": "boolean"},
            "created_at": {"type": "integer", "description": "Unix seconds"},
            "started_at": _nullable({"type": "integer"}),
            "finished_at": _nullable({"type": "integer"}),
            "duration": _nullable(
                {"type": "number", "description": "seconds from started_at to finished_at"}
            ),
            "queue_position": _nullable({"type": "integer", "minimum": 1}),
            "trained_tokens": _nullable({"type": "integer"}),
            "error": _nullable(_ref("JobError")),
            "metrics": _nullable(_ref("TrainingMetrics")),
            "webhook_url": {"type": "string", "description": "Only on jobs created with a webhook_url"},
            "webhook_events": {"type": "array", "items": {"enum": list(WEBHOOK_EVENTS)}},
        },
    },
    "TuningJobList": {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("TuningJob")},
            "has_more": {"type": "boolean"},
            "first_id": _nullable({"type": "string"}),
            "last_id": _nullable({"type": "string"}),
        },
    },
    "DeletedTuningJob": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "tuning.job"},
            "deleted": {"const": True},
        },
    },
    "LogRecord": {
        "type": "object",
        "required": ["seq", "type", "time"],
        "additionalProperties": True,
        "description": "A trainer record (started, metrics, eval, checkpoint, completed, failed, "
        "interrupted) "
        "or a service record (status, log); see docs/trainer-protocol.md",
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "type": {"type": "string"},
            "time": {"type": "number"},
        },
    },
    "LogPage": {
        "type": "object",
        "required": ["object", "data", "has_more", "last_seq"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("LogRecord")},
            "has_more": {"type": "boolean"},
            "last_seq": {"type": "integer"},
        },
    },
    "Health": {
        "type": "object",
        "required": [
            "status",
            "version",
            "uptime",
            "active_jobs",
            "running_jobs",
            "queued_jobs",
            "paused_jobs",
            "total_jobs",
        ],
        "properties": {
            "status": {"const": "healthy"},
            "version": {"type": "string"},
            "uptime": {"type": "number", "description": "seconds since start"},
            "active_jobs": {
                "type": "integer",
                "description": "Unfinished jobs that are not paused: queued or holding a trainer",
            },
            "running_jobs": {
                "type": "integer",
                "description": "Jobs holding a trainer (running, cancelling, pausing)",
            },
            "queued_jobs": {"type": "integer", "description": "Jobs waiting for a slot"},
            "paused_jobs": {
                "type": "integer",
                "description": "Paused jobs: no trainer, no slot; resume queues them again",
            },
            "total_jobs": {"type": "integer"},
        },
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    what = {
        400: "Malformed request (not JSON, wrong types, unsafe path)",
        401: "Missing or invalid API key",
        404: "No such job (or it belongs to another key)",
        409: "The job is in the wrong state for this action",
        413: "Request body over the limit",
        422: "Invalid values: hyperparameters, data file contents (with `line`), idempotency key reuse",
        429: "Too many requests for this API key (per-key rate limit); wait `Retry-After` seconds",
    }
    if 401 in codes:  # every authenticated route is rate limited per key
        codes = (*codes, 429)
    out = {str(c): _json(_ref("Error"), what[c]) for c in codes}
    if "429" in out:
        out["429"]["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}}
        }
    return out


# What a created job leads to (OpenAPI links: clients and schemathesis's stateful tests follow them).
_JOB_LINKS = {
    name: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}}
    for name, op in (
        ("GetJob", "getTuning"),
        ("CancelJob", "cancelTuning"),
        ("DeleteJob", "deleteTuning"),
        ("GetJobLogs", "getTuningLogs"),
        ("GetJobEvents", "getTuningEvents"),
        ("GetJobCheckpoints", "getTuningCheckpoints"),
        ("PauseJob", "pauseTuning"),
        ("ResumeJob", "resumeTuning"),
        ("DownloadJob", "downloadTuning"),
    )
}


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _limit(default: int, maximum: int) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
    }


PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "operationId": "health",
            "summary": "Service health (no auth)",
            "tags": ["service"],
            "security": [],
            "responses": {"200": _json(_ref("Health"), "The service is up")},
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (no auth unless TUNING_METRICS_KEY is set)",
            "tags": ["service"],
            "description": "Prometheus text format; every series, its type and labels are listed in "
            "docs/service.md (Metrics). With TUNING_METRICS_KEY set: `Authorization: Bearer <that key>`.",
            "security": [{}, {"bearerAuth": []}],
            "responses": {
                "200": {
                    "description": "The metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "401": _json(_ref("Error"), "TUNING_METRICS_KEY is set and was not sent"),
            },
        }
    },
    "/v1/tunings.create": {
        "post": {
            "operationId": "createTuning",
            "summary": "Create a tuning job",
            "tags": ["tunings"],
            "description": "Validates the data files and hyperparameters, then queues the job. Send an "
            "`Idempotency-Key` header to make retries safe: the same key and body return the same job.",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "description": "Printable ASCII, no leading/trailing spaces",
                    "schema": {"type": "string", "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("CreateTuningRequest")}},
            },
            "responses": {
                "200": {**_json(_ref("TuningJob"), "The queued job"), "links": _JOB_LINKS},
                **_errors(400, 401, 413, 422),
            },
        }
    },
    "/v1/tunings.get/{job_id}": {
        "get": {
            "operationId": "getTuning",
            "summary": "Get a job",
            "tags": ["tunings"],
            "parameters": [_JOB_ID],
            "responses": {"200": _json(_ref("TuningJob"), "The job"), **_errors(401, 404)},
        }
    },
    "/v1/tunings.list": {
        "get": {
            "operationId": "listTunings",
            "summary": "List your jobs, newest first",
            "tags": ["tunings"],
            "parameters": [
                _limit(20, 100),
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "Cursor: the last job id of the previous page",
                },
                {"name": "status", "in": "query", "schema": {"enum": STATUSES}},
            ],
            "responses": {"200": _json(_ref("TuningJobList"), "A page of jobs"), **_errors(400, 401)},
        }
    },
    "/v1/tunings.cancel/{job_id}": {
        "post": {
            "operationId": "cancelTuning",
            "summary": "Cancel a job",
            "tags": ["tunings"],
            "parameters": [_JOB_ID],
            "description": "A queued job is cancelled at once; a running one goes to `cancelling` while the "
            "trainer "
            "checkpoints, then `cancelled`.",
            "responses": {"200": _json(_ref("TuningJob"), "The job"), **_errors(401, 404, 409)},
        }
    },
    "/v1/tunings.delete/{job_id}": {
        "delete": {
            "operationId": "deleteTuning",
            "summary": "Delete a finished job and its files",
            "tags": ["tunings"],
            "parameters": [_JOB_ID],
            "responses": {"200": _json(_ref("DeletedTuningJob"), "Deleted"), **_errors(401, 404, 409)},
        }
    },
    "/v1/tunings.logs/{job_id}": {
        "get": {
            "operationId": "getTuningLogs",
            "summary": "A job's records and log lines",
            "tags": ["tunings"],
            "description": "JSON pages by default. With `follow=true`: Server-Sent Events "
            "(`id` = record seq, `event` = record type, `data` = the record), resumable with "
            "`Last-Event-ID`, `: heartbeat` comments during silence, ending after the terminal `status` "
            "record.",
            "parameters": [
                _JOB_ID,
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**62, "default": 0},
                },
                _limit(100, 1000),
                {"name": "follow", "in": "query", "schema": {"type": "boolean", "default": False}},
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**62},
                },
            ],
            "responses": {
                "200": {
                    "description": "A page of records, or an event stream with follow=true",
                    "content": {
                        "application/json": {"schema": _ref("LogPage")},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors(400, 401, 404),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["service"],
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
        }
    },
    "/docs": {
        "get": {
            "operationId": "docs",
            "summary": "Swagger UI (works offline)",
            "tags": ["service"],
            "security": [],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
        }
    },
}


def openapi_document(version: str) -> dict[str, Any]:
    # Files, job capabilities and the OpenAI-compatible routes (imported here: that module uses our helpers).
    from . import openapi_extra

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tuning service",
            "version": version,
            "description": "Self-hosted LoRA/QLoRA fine-tuning jobs. Authenticate with "
            "`Authorization: Bearer "
            '<key>`; errors are `{"error": {"code", "message", "param", "type"}}`.',
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "tunings", "description": "Fine-tuning jobs"},
            {"name": "files", "description": "Uploaded training files"},
            {"name": "openai", "description": "OpenAI-compatible fine-tuning API (docs/openai-compat.md)"},
            {"name": "service"},
        ],
        "paths": {**PATHS, **openapi_extra.PATHS},
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key, e.g. test-key-001 in development",
                }
            },
            "schemas": {**SCHEMAS, **openapi_extra.SCHEMAS},
        },
    }

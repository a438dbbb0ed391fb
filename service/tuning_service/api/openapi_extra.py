"""OpenAPI for files, events, checkpoints, download, pause/resume and the OpenAI-compatible routes
(merged into `/openapi.json` by openapi.py; docs/api.md and docs/openai-compat.md are the prose)."""

from __future__ import annotations

from typing import Any

from ..openai.compat import (
    CHECKPOINT_ID_PATTERN,
    EVENT_ID_PATTERN,
    MAX_LEARNING_RATE_MULTIPLIER,
)
from .openapi import (
    _HYPERPARAMETERS,
    _JOB_ID,
    IDEMPOTENCY_KEY_PATTERN,
    _errors,
    _json,
    _limit,
    _nullable,
    _ref,
)
from .openapi import (
    SCHEMAS as NATIVE_SCHEMAS,
)

_FILE_ID = {
    "name": "file_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^file-"},
}
_AFTER = {
    "name": "after",
    "in": "query",
    "schema": {"type": "string", "maxLength": 128},
    "description": "Cursor: last id of the previous page (an unknown id gives an empty page)",
}


def _cursor(pattern: str, what: str) -> dict[str, Any]:
    return {
        "name": "after",
        "in": "query",
        "schema": {"type": "string", "maxLength": 128, "pattern": pattern},
        "description": f"Cursor: the last {what} id of the previous page (another job's gives an empty page)",
    }


_N_OR_AUTO = {"anyOf": [{"type": "number"}, {"const": "auto"}]}
_NATIVE_CREATE = NATIVE_SCHEMAS["CreateTuningRequest"]["properties"]
_OPENAI_INT = {"type": "integer", "minimum": 1}

SCHEMAS: dict[str, Any] = {
    "File": {
        "type": "object",
        "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
        "properties": {
            "id": {"type": "string", "examples": ["file-5d1c0e9a7b3f4a2c8e6d0b1f"]},
            "object": {"const": "file"},
            "bytes": {"type": "integer"},
            "created_at": {"type": "integer"},
            "filename": {"type": "string"},
            "purpose": {"const": "fine-tune"},
            "status": {"enum": ["processed", "error"]},
            "status_details": _nullable({"type": "string"}),
            "format": _nullable({"enum": ["chat", "completion", "text", "alpaca"]}),
            "num_examples": _nullable({"type": "integer"}),
            "error": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "line": _nullable({"type": "integer"}),
                    },
                }
            ),
        },
    },
    "FileUpload": {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "The JSONL file"},
            "purpose": {"const": "fine-tune"},
        },
        "additionalProperties": False,
    },
    "FileList": {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("File")},
            "has_more": {"type": "boolean"},
            "first_id": _nullable({"type": "string"}),
            "last_id": _nullable({"type": "string"}),
        },
    },
    "DeletedFile": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {"id": {"type": "string"}, "object": {"const": "file"}, "deleted": {"const": True}},
    },
    "Checkpoint": {
        "type": "object",
        "required": ["object", "id", "step", "created_at", "path", "metrics"],
        "properties": {
            "object": {"const": "tuning.checkpoint"},
            "id": {"type": "string"},
            "job_id": {"type": "string"},
            "step": {"type": "integer"},
            "created_at": {"type": "integer"},
            "path": {"type": "string", "description": "Relative to the job's folder"},
            "metrics": {"type": "object", "description": "step, train_loss, learning_rate, epoch, eval_loss"},
        },
    },
    "CheckpointList": {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Checkpoint")},
            "has_more": {"type": "boolean"},
        },
    },
    "OpenAIHyperparameters": {
        "type": "object",
        "description": "OpenAI's names (n_epochs, batch_size, learning_rate_multiplier: a multiple of the "
        "default learning rate); this service's own hyperparameter names are accepted as well, except "
        "`epochs` (send n_epochs). Give learning_rate or learning_rate_multiplier, not both.",
        "additionalProperties": False,
        "properties": {
            "n_epochs": {
                "anyOf": [{**_OPENAI_INT, "maximum": 1000}, {"const": "auto"}],
                "default": "auto",
            },
            **{k: v for k, v in _HYPERPARAMETERS["properties"].items() if k != "epochs"},
            "learning_rate_multiplier": {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LEARNING_RATE_MULTIPLIER},
                    {"const": "auto"},
                ],
                "default": "auto",
            },
        },
        "not": {"required": ["learning_rate", "learning_rate_multiplier"]},
    },
    "OpenAIJobHyperparameters": {
        "type": "object",
        "properties": {
            "n_epochs": _N_OR_AUTO,
            "batch_size": _N_OR_AUTO,
            "learning_rate_multiplier": _N_OR_AUTO,
        },
    },
    "OpenAICreateJob": {
        "type": "object",
        "required": ["model", "training_file"],
        "additionalProperties": False,
        "properties": {
            "model": _NATIVE_CREATE["model"],
            "training_file": {
                "type": "string",
                "minLength": 1,
                "description": "A file id (file-...) or a path",
            },
            "validation_file": _nullable({"type": "string"}),
            # As on the native route, optional fields may be sent as null, meaning "the default".
            "hyperparameters": _nullable(_ref("OpenAIHyperparameters")),
            "method": _nullable(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {"const": "supervised", "default": "supervised"},
                        "supervised": _nullable(
                            {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"hyperparameters": _nullable(_ref("OpenAIHyperparameters"))},
                            }
                        ),
                    },
                }
            ),
            "suffix": _NATIVE_CREATE["suffix"],
            "seed": _NATIVE_CREATE["seed"],
            "metadata": _NATIVE_CREATE["metadata"],
            "integrations": _nullable({"type": "array", "maxItems": 0}),
            "tuning_method": _nullable(
                {"enum": ["qlora", "lora"], "description": "Extension: the adapter method"}
            ),
            "resume_on_restart": _NATIVE_CREATE["resume_on_restart"],
        },
    },
    "OpenAIJob": {
        "type": "object",
        "required": ["object", "id", "status", "model", "created_at"],
        "properties": {
            "object": {"const": "fine_tuning.job"},
            "id": {"type": "string"},
            "status": {
                "enum": [
                    "validating_files",
                    "queued",
                    "running",
                    "paused",
                    "succeeded",
                    "failed",
                    "cancelled",
                ]
            },
            "model": {"type": "string"},
            "created_at": {"type": "integer"},
            "finished_at": _nullable({"type": "integer"}),
            "fine_tuned_model": _nullable(
                {"type": "string", "examples": ["ft:tiny-llama:key_ab12:demo:ftjob-..."]}
            ),
            "organization_id": {"type": "string"},
            "result_files": {"type": "array", "items": {"type": "string"}},
            "training_file": {"type": "string"},
            "validation_file": _nullable({"type": "string"}),
            "hyperparameters": _ref("OpenAIJobHyperparameters"),
            "trained_tokens": _nullable({"type": "integer"}),
            "error": _nullable({"type": "object"}),
            "seed": {"type": "integer"},
            "estimated_finish": _nullable({"type": "integer"}),
            "integrations": {"type": "array"},
            "metadata": _nullable({"type": "object"}),
            "method": {"type": "object"},
            "tuning": {"type": "object", "description": "This service's status, adapter method and metrics"},
        },
    },
    "OpenAIEvent": {
        "type": "object",
        "properties": {
            "object": {"const": "fine_tuning.job.event"},
            "id": {"type": "string"},
            "created_at": {"type": "integer"},
            "level": {"enum": ["info", "warn", "error"]},
            "message": {"type": "string"},
            "data": {"type": "object"},
            "type": {"enum": ["message", "metrics"]},
        },
    },
    "OpenAICheckpoint": {
        "type": "object",
        "properties": {
            "object": {"const": "fine_tuning.job.checkpoint"},
            "id": {"type": "string"},
            "created_at": {"type": "integer"},
            "fine_tuned_model_checkpoint": {"type": "string"},
            "fine_tuning_job_id": {"type": "string"},
            "step_number": {"type": "integer"},
            "metrics": {"type": "object"},
        },
    },
}


def _list_of(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref(item)},
            "has_more": {"type": "boolean"},
            "first_id": _nullable({"type": "string"}),
            "last_id": _nullable({"type": "string"}),
        },
    }


def _links(param: str, **ops: str) -> dict[str, Any]:
    """OpenAPI links from a created object's id to the operations that take it (clients and schemathesis's
    stateful tests follow them)."""
    return {
        name: {"operationId": op, "parameters": {param: "$response.body#/id"}} for name, op in ops.items()
    }


_NATIVE_FILE_LINKS = _links(
    "file_id", GetFile="getFile", GetFileContent="getFileContent", DeleteFile="deleteFile"
)
_OPENAI_FILE_LINKS = _links(
    "file_id", GetFile="openaiGetFile", GetFileContent="openaiFileContent", DeleteFile="openaiDeleteFile"
)
_OPENAI_JOB_LINKS = _links(
    "job_id",
    GetJob="openaiGetJob",
    CancelJob="openaiCancelJob",
    PauseJob="openaiPauseJob",
    ResumeJob="openaiResumeJob",
    ListEvents="openaiListEvents",
    ListCheckpoints="openaiListCheckpoints",
)


def _op(op_id: str, summary: str, tag: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses, **extra}


_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": _ref("FileUpload")}},
}
_CONTENT = {
    "description": "The file as uploaded",
    "content": {"application/jsonl": {"schema": {"type": "string"}}},
}
_TAR = {
    "description": "A tar.gz stream of the adapter folder (members at the top level)",
    "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
}
_OPENAI_CREATE = {"required": True, "content": {"application/json": {"schema": _ref("OpenAICreateJob")}}}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "Printable ASCII, no leading/trailing spaces: the same key and body return the same job",
    "schema": {"type": "string", "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
}


def _ft(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return _op(op_id, summary, "openai", responses, **extra)


PATHS: dict[str, Any] = {
    # ---- native: files
    "/v1/files.upload": {
        "post": _op(
            "uploadFile",
            "Upload a JSONL file (validated on upload)",
            "files",
            {
                "200": {
                    **_json(_ref("File"), "The stored file (`processed` or `error`)"),
                    "links": _NATIVE_FILE_LINKS,
                },
                **_errors(400, 401, 413),
            },
            requestBody=_UPLOAD_BODY,
        ),
    },
    "/v1/files.list": {
        "get": _op(
            "listFiles",
            "List your files, newest first",
            "files",
            {"200": _json(_ref("FileList"), "A page of files"), **_errors(400, 401)},
            parameters=[
                _limit(20, 100),
                _AFTER,
                {"name": "purpose", "in": "query", "schema": {"const": "fine-tune"}},
            ],
        ),
    },
    "/v1/files.get/{file_id}": {
        "get": _op(
            "getFile",
            "Get a file",
            "files",
            {"200": _json(_ref("File"), "The file"), **_errors(400, 401, 404)},
            parameters=[_FILE_ID],
        ),
    },
    "/v1/files.content/{file_id}": {
        "get": _op(
            "getFileContent",
            "Download a file's bytes",
            "files",
            {"200": _CONTENT, **_errors(400, 401, 404)},
            parameters=[_FILE_ID],
        ),
    },
    "/v1/files.delete/{file_id}": {
        "delete": _op(
            "deleteFile",
            "Delete a file (not while an unfinished job uses it)",
            "files",
            {"200": _json(_ref("DeletedFile"), "Deleted"), **_errors(400, 401, 404, 409)},
            parameters=[_FILE_ID],
        ),
    },
    # ---- native: job capabilities
    "/v1/tunings.events/{job_id}": {
        "get": _op(
            "getTuningEvents",
            "A job's records without raw log lines, oldest first",
            "tunings",
            {"200": _json(_ref("LogPage"), "A page of records"), **_errors(400, 401, 404)},
            parameters=[
                _JOB_ID,
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**62, "default": 0},
                },
                _limit(100, 1000),
            ],
        ),
    },
    "/v1/tunings.checkpoints/{job_id}": {
        "get": _op(
            "getTuningCheckpoints",
            "A job's checkpoints on disk, with the metrics at each step",
            "tunings",
            {"200": _json(_ref("CheckpointList"), "The checkpoints"), **_errors(400, 401, 404)},
            parameters=[_JOB_ID],
        ),
    },
    "/v1/tunings.download/{job_id}": {
        "get": _op(
            "downloadTuning",
            "Download the final adapter (or a checkpoint) as tar.gz",
            "tunings",
            {"200": _TAR, **_errors(400, 401, 404, 409)},
            parameters=[
                _JOB_ID,
                {
                    "name": "checkpoint",
                    "in": "query",
                    "description": "A checkpoint step (see the checkpoints); without it, the final adapter",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**31},
                },
            ],
        ),
    },
    "/v1/tunings.pause/{job_id}": {
        "post": _op(
            "pauseTuning",
            "Pause a job (the trainer checkpoints, then stops)",
            "tunings",
            {
                "200": _json(_ref("TuningJob"), "The job (`paused` or `pausing`)"),
                **_errors(400, 401, 404, 409),
            },
            parameters=[_JOB_ID],
        ),
    },
    "/v1/tunings.resume/{job_id}": {
        "post": _op(
            "resumeTuning",
            "Resume a paused, failed or cancelled job from its newest checkpoint",
            "tunings",
            {"200": _json(_ref("TuningJob"), "The job, queued"), **_errors(400, 401, 404, 409)},
            parameters=[_JOB_ID],
        ),
    },
    # ---- OpenAI-compatible
    "/v1/files": {
        "post": _ft(
            "openaiCreateFile",
            "OpenAI: upload a file",
            {
                "200": {**_json(_ref("File"), "The file"), "links": _OPENAI_FILE_LINKS},
                **_errors(400, 401, 413),
            },
            requestBody=_UPLOAD_BODY,
        ),
        "get": _ft(
            "openaiListFiles",
            "OpenAI: list files",
            {"200": _json(_ref("FileList"), "A page of files"), **_errors(400, 401)},
            parameters=[
                _limit(10000, 10000),
                _AFTER,
                {
                    "name": "order",
                    "in": "query",
                    "description": "Newest first is the only order",
                    "schema": {"const": "desc"},
                },
                {"name": "purpose", "in": "query", "schema": {"const": "fine-tune"}},
            ],
        ),
    },
    "/v1/files/{file_id}": {
        "get": _ft(
            "openaiGetFile",
            "OpenAI: get a file",
            {"200": _json(_ref("File"), "The file"), **_errors(400, 401, 404)},
            parameters=[_FILE_ID],
        ),
        "delete": _ft(
            "openaiDeleteFile",
            "OpenAI: delete a file",
            {"200": _json(_ref("DeletedFile"), "Deleted"), **_errors(400, 401, 404, 409)},
            parameters=[_FILE_ID],
        ),
    },
    "/v1/files/{file_id}/content": {
        "get": _ft(
            "openaiFileContent",
            "OpenAI: a file's bytes",
            {"200": _CONTENT, **_errors(400, 401, 404)},
            parameters=[_FILE_ID],
        ),
    },
    "/v1/fine_tuning/jobs": {
        "post": _ft(
            "openaiCreateJob",
            "OpenAI: create a fine-tuning job",
            {
                "200": {**_json(_ref("OpenAIJob"), "The job"), "links": _OPENAI_JOB_LINKS},
                **_errors(400, 401, 404, 413),
            },
            parameters=[_IDEMPOTENCY_KEY],
            requestBody=_OPENAI_CREATE,
        ),
        "get": _ft(
            "openaiListJobs",
            "OpenAI: list jobs (metadata[k]=v filters)",
            {"200": _json(_list_of("OpenAIJob"), "A page of jobs"), **_errors(400, 401)},
            parameters=[
                _limit(20, 100),
                _AFTER,
                {
                    "name": "metadata",
                    "in": "query",
                    "style": "deepObject",
                    "explode": True,
                    "description": "metadata[KEY]=VALUE: only jobs with every given pair",
                    "schema": {
                        "type": "object",
                        "propertyNames": {"minLength": 1, "maxLength": 64},
                        "additionalProperties": {"type": "string"},
                    },
                },
            ],
        ),
    },
    "/v1/fine_tuning/jobs/{job_id}": {
        "get": _ft(
            "openaiGetJob",
            "OpenAI: get a job",
            {"200": _json(_ref("OpenAIJob"), "The job"), **_errors(400, 401, 404)},
            parameters=[_JOB_ID],
        ),
    },
    "/v1/fine_tuning/jobs/{job_id}/cancel": {
        "post": _ft(
            "openaiCancelJob",
            "OpenAI: cancel a job",
            {"200": _json(_ref("OpenAIJob"), "The job"), **_errors(400, 401, 404, 409)},
            parameters=[_JOB_ID],
        ),
    },
    "/v1/fine_tuning/jobs/{job_id}/pause": {
        "post": _ft(
            "openaiPauseJob",
            "OpenAI: pause a job",
            {"200": _json(_ref("OpenAIJob"), "The job"), **_errors(400, 401, 404, 409)},
            parameters=[_JOB_ID],
        ),
    },
    "/v1/fine_tuning/jobs/{job_id}/resume": {
        "post": _ft(
            "openaiResumeJob",
            "OpenAI: resume a job",
            {"200": _json(_ref("OpenAIJob"), "The job"), **_errors(400, 401, 404, 409)},
            parameters=[_JOB_ID],
        ),
    },
    "/v1/fine_tuning/jobs/{job_id}/events": {
        "get": _ft(
            "openaiListEvents",
            "OpenAI: a job's events, newest first",
            {"200": _json(_list_of("OpenAIEvent"), "A page of events"), **_errors(400, 401, 404)},
            parameters=[_JOB_ID, _limit(20, 1000), _cursor(EVENT_ID_PATTERN, "event")],
        ),
    },
    "/v1/fine_tuning/jobs/{job_id}/checkpoints": {
        "get": _ft(
            "openaiListCheckpoints",
            "OpenAI: a job's checkpoints, newest first",
            {"200": _json(_list_of("OpenAICheckpoint"), "A page of checkpoints"), **_errors(400, 401, 404)},
            parameters=[_JOB_ID, _limit(10, 1000), _cursor(CHECKPOINT_ID_PATTERN, "checkpoint")],
        ),
    },
}

"""Jobs: the create body, the job object and what hangs off a job (records, checkpoints), their pages, and
the query strings and headers of the job routes. docs/api.md is the prose; this is the definition."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, ConfigDict, Field, RootModel, model_validator

from tuning_trainer import records
from tuning_trainer.config import (
    DEFAULT_ADAPTER,
    DEFAULT_METHOD,
    DEFAULT_SEED,
    Adapter,
    Hyperparameters,
    Integration,
    Integrations,
    LegacyMethod,
    Method,
    Seed,
)
from tuning_trainer.records import Estimate, lenient
from tuning_trainer.schema import INTEGRAL, cross_field

from ..states import JobStatus
from .base import Page, QueryModel, RequestBody, ResponseModel

# ---- field types -----------------------------------------------------------------------------------------

# Largest record sequence number a client may name (SQLite integers are 64-bit).
MAX_SEQ = 2**62
# Largest checkpoint step a download may name.
MAX_STEP = 2**31
MAX_MODEL_CHARS = 256
MAX_PATH_CHARS = 1024
MAX_SUFFIX_CHARS = 64
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_WEBHOOK_URL_CHARS = 2048
MAX_CURSOR_CHARS = 128

WebhookEvent = Literal["job.succeeded", "job.failed", "job.cancelled", "job.checkpoint"]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)
# A job's end: one event per terminal status (states.py), the default of a webhook.
TERMINAL_EVENTS: tuple[str, ...] = tuple(f"job.{s.value}" for s in JobStatus if s.is_terminal())

# Character classes are spelled out, never `\s`: Python's and JavaScript's `\s` differ (\x85, \x1c-\x1f,
# \ufeff), and the document's patterns must mean the same in every engine. "Control" is C0, DEL and C1.
# One path segment of a model name: no space, slash, backslash or control character, and not "." or ".."
# (without lookaheads, so that every JSON Schema engine and test-data generator understands it).
_C = r"[^\x00-\x20\x7f-\x9f/\\]"
_N = r"[^\x00-\x20\x7f-\x9f/\\.]"
_SEGMENT = rf"(?:{_N}|\.{_N}|\.\.{_C}){_C}*"
MODEL_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"
# A data file: an uploaded file's id or a path under the files root. Not blank; no control characters,
# backslashes or percent-escapes (a path is not a URL: "%2e%2e" is a probe, never a file we want).
# Where the path leads (no "..", inside the root, through symlinks too) is checked against the files root
# (files/paths.py).
FILE_REF_PATTERN = r"^ *[^\x00-\x20\x7f-\x9f\\%][^\x00-\x1f\x7f-\x9f\\%]*$"
FILE_ID_PATTERN = r"^file-[0-9a-f]{24}$"
SUFFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Printable ASCII without leading/trailing spaces (HTTP strips those).
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_HOST = r"(?:[^\x00-\x20\x7f-\x9f/\\@?#:\[\]]+|\[[0-9A-Fa-f:.]+\])"
WEBHOOK_URL_PATTERN = rf"^https?://{_HOST}(?::{_PORT})?(?:[/?#][^\x00-\x20\x7f-\x9f]*)?$"

ModelName = Annotated[
    str,
    Field(
        max_length=MAX_MODEL_CHARS,
        pattern=MODEL_PATTERN,
        description="A model folder under TUNING_MODELS_DIR or a hub id",
        examples=["tiny-llama", "meta-llama/Llama-2-7b-hf"],
        json_schema_extra={
            "x-rule": "a model folder name or a hub id without spaces, backslashes, '.' or '..' parts or a "
            "leading '/' (e.g. 'tiny-llama' or 'meta-llama/Llama-2-7b-hf'), at most "
            f"{MAX_MODEL_CHARS} characters"
        },
    ),
]
FileRef = Annotated[
    str,
    Field(
        max_length=MAX_PATH_CHARS,
        pattern=FILE_REF_PATTERN,
        description="An uploaded file's id (file-...) or a JSONL path relative to TUNING_FILES_ROOT",
        examples=["data/train.jsonl"],
        json_schema_extra={
            "x-rule": f"a file id or a path of at most {MAX_PATH_CHARS} characters, not blank, without "
            "control characters, backslashes or '%'"
        },
    ),
]
Suffix = Annotated[
    str,
    Field(
        max_length=MAX_SUFFIX_CHARS,
        pattern=SUFFIX_PATTERN,
        description="Goes into the fine-tuned model's name",
        json_schema_extra={
            "x-rule": f"1-{MAX_SUFFIX_CHARS} characters of letters, digits, '.', '_', '-' (a letter or digit "
            "first)"
        },
    ),
]
Metadata = Annotated[
    dict[
        Annotated[str, Field(max_length=MAX_METADATA_KEY_CHARS)],
        Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)],
    ],
    Field(max_length=MAX_METADATA_PAIRS, description="Free-form string pairs stored with the job"),
]
MAX_GPUS_PER_JOB = 64
NumGpus = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_GPUS_PER_JOB,
        description="GPUs for the job, one training process each; refused (422) above the GPUs this service "
        "leases (TUNING_GPUS), and above 1 on a service without GPUs",
    ),
    INTEGRAL,
]
Distributed = Annotated[
    Literal["ddp", "fsdp"],
    Field(
        description="How a job on several GPUs shares the work: ddp (a full copy of the model per GPU) or "
        "fsdp (the weights sharded across them, for a base that does not fit one GPU; QLoRA's 4-bit weights "
        "are stored in the compute dtype so that they shard)"
    ),
]
DryRun = Annotated[
    bool,
    Field(
        description="Create no job: answer 200 with a tuning.estimate (the data tokenised with the model's "
        "tokenizer, the steps, padding efficiency, peak memory per GPU and whether it fits, and the seconds "
        "where this service has trained that model shape on this device before)"
    ),
]
WebhookUrl = Annotated[
    str,
    Field(
        max_length=MAX_WEBHOOK_URL_CHARS,
        pattern=WEBHOOK_URL_PATTERN,
        description="POSTed a signed event when the job ends (docs/api.md, Webhooks). Needs the API key's "
        "signing secret (`keys set-webhook`; else 409 webhook_secret_missing); a private, loopback or other "
        "non-public address, or a host resolving to one, is refused with 403 webhook_url_not_allowed unless "
        "TUNING_WEBHOOK_ALLOW_NETWORKS allows it",
        json_schema_extra={
            "format": "uri",
            "x-rule": f"an http:// or https:// URL with a host and no credentials, at most "
            f"{MAX_WEBHOOK_URL_CHARS} printable characters",
        },
    ),
]
MAX_PRIORITY = 100
Priority = Annotated[
    int,
    Field(
        ge=-MAX_PRIORITY,
        le=MAX_PRIORITY,
        description="The queue runs higher priorities first; among equal priorities, the API key with the "
        "least GPU time in the fair-share window (TUNING_FAIR_SHARE_WINDOW_HOURS) first, then creation order",
    ),
    INTEGRAL,
]
MAX_RUNTIME_LIMIT_SECONDS = 30 * 24 * 3600
MaxRuntimeSeconds = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_RUNTIME_LIMIT_SECONDS,
        description="Training time allowed, counted over the job's runs (retries included) since it was "
        "created or last resumed by hand. At the deadline the trainer checkpoints and stops, and the job "
        "fails with `deadline_exceeded`, keeping the checkpoint: `tunings.resume` continues it with a fresh "
        "allowance. Default: the service's TUNING_MAX_RUNTIME_SECONDS (none: no limit)",
    ),
    INTEGRAL,
]
MAX_AUTO_RETRY = 10
AutoRetry = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_AUTO_RETRY,
        description="Restart the job from its newest checkpoint up to this many times after an "
        "infrastructure failure: the trainer crashed or was killed, ran out of memory (retried with the "
        "smaller micro-batch the trainer suggests, gradient accumulation raised to keep the batch), or "
        "the service restarted. Never after a user error (bad data or config, model not found). Each "
        "retry is a `retry` record",
    ),
    INTEGRAL,
]
# from_checkpoint: a job id (its final adapter), JOB_ID:STEP (a checkpoint of it), or OpenAI's checkpoint id.
FROM_CHECKPOINT_PATTERN = (
    r"^(ftjob-[A-Za-z0-9_-]{1,64}(:[0-9]{1,10})?|ftckpt-[A-Za-z0-9_-]{1,64}-[0-9]{1,10})$"
)
FromCheckpoint = Annotated[
    str,
    Field(
        max_length=MAX_CURSOR_CHARS,
        pattern=FROM_CHECKPOINT_PATTERN,
        description="Start from another job's adapter: its id (the final adapter of a succeeded job), "
        "JOB_ID:STEP (one of its checkpoints) or an OpenAI checkpoint id (ftckpt-...). The new job trains "
        "those weights (and that LoRA shape) with a fresh optimizer, its own data and method; the job must "
        "be the caller's (else 404 checkpoint_not_found) and of the same base model (else 422 "
        "checkpoint_model_mismatch)",
        examples=["ftjob-3f2c9a0e8b7d4c1a9e6f0b2d", "ftjob-3f2c9a0e8b7d4c1a9e6f0b2d:40"],
        json_schema_extra={
            "x-rule": "a job id (ftjob-...), JOB_ID:STEP or a checkpoint id (ftckpt-JOB-STEP)"
        },
    ),
]
IdempotencyKey = Annotated[
    str,
    Field(
        max_length=MAX_IDEMPOTENCY_KEY_CHARS,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Printable ASCII, no leading/trailing spaces: the same key and body return the same job",
        json_schema_extra={
            "x-rule": f"1-{MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters, no leading/trailing spaces"
        },
    ),
]
LastEventId = Annotated[
    int, Field(ge=0, le=MAX_SEQ, description="Resume a stream after this record (the SSE `id` last seen)")
]


def _empty_is_absent(value: Any) -> Any:
    return None if value == "" else value


Cursor = Annotated[
    Annotated[str, Field(max_length=MAX_CURSOR_CHARS)] | None,
    BeforeValidator(_empty_is_absent),
    Field(description="The last id of the previous page"),
]


# ---- create ----------------------------------------------------------------------------------------------


# A legacy method ("qlora"/"lora": sft with that adapter) takes no other adapter (CreateTuningRequest).
_LEGACY_ADAPTER_RULES: list[Any] = [
    {
        "if": {"required": ["method", "adapter"], "properties": {"method": {"const": legacy}}},
        "then": {"properties": {"adapter": {"const": legacy}}},
    }
    for legacy in get_args(LegacyMethod)
]


class CreateTuningRequest(RequestBody):
    """The body of POST /v1/tunings.create. Optional fields may be sent as null, meaning their default."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                # webhook_events is about webhook_url's deliveries: it needs one.
                {
                    "if": {
                        "required": ["webhook_events"],
                        "properties": {"webhook_events": {"type": "array"}},
                    },
                    "then": {"required": ["webhook_url"], "properties": {"webhook_url": {"type": "string"}}},
                },
                *_LEGACY_ADAPTER_RULES,
            ],
            "examples": [
                {
                    "model": "meta-llama/Llama-2-7b-hf",
                    "training_file": "data/train.jsonl",
                    "hyperparameters": {"epochs": 3, "learning_rate": 0.0002, "batch_size": 4},
                }
            ],
        }
    )

    model: ModelName
    training_file: FileRef
    validation_file: FileRef | Literal[""] | None = None
    """Optional JSONL data for the eval loss (a file id or a path, as training_file; "" means none)"""
    hyperparameters: Hyperparameters = Hyperparameters()
    """Training hyperparameters, each with its default and limit (the Hyperparameters schema;
    docs/trainer.md)"""
    method: Method | LegacyMethod = DEFAULT_METHOD
    """What the adapter is trained for: sft (supervised, on chat/completion/text/alpaca data), or a
    preference objective on chosen/rejected pairs: dpo, orpo, simpo. "qlora" and "lora" (the values before
    preference tuning) mean sft with that adapter"""
    adapter: Adapter = DEFAULT_ADAPTER
    """How the adapter sits on the base: qlora (a 4-bit base) or lora"""
    from_checkpoint: FromCheckpoint | None = None
    suffix: Suffix | None = None
    seed: Seed = DEFAULT_SEED
    metadata: Metadata = {}
    webhook_url: WebhookUrl | None = None
    webhook_events: Annotated[list[WebhookEvent], Field(min_length=1)] | None = None
    """Events sent to webhook_url (default: the three terminal ones); needs a webhook_url"""
    resume_on_restart: bool = False
    """If the service restarts and the trainer is gone with it, queue the job again to continue from its
    newest checkpoint (instead of failing with `service_restart`); set hyperparameters.save_steps to have
    checkpoints to resume from"""
    num_gpus: NumGpus = 1
    distributed: Distributed = "ddp"
    integrations: Integrations = []
    priority: Priority = 0
    max_runtime_seconds: MaxRuntimeSeconds | None = None
    auto_retry: AutoRetry = 0
    dry_run: DryRun = False

    @model_validator(mode="after")
    def _events_need_a_url(self) -> CreateTuningRequest:
        if self.webhook_events is not None and self.webhook_url is None:
            raise cross_field("webhook_events", "webhook_events needs a webhook_url")
        if self.legacy_method and "adapter" in self.model_fields_set and self.adapter != self.method:
            raise cross_field(
                "adapter",
                f'method "{self.method}" (sft with the {self.method} adapter) contradicts adapter '
                f'"{self.adapter}": send method "sft" with the adapter you want',
            )
        return self

    @property
    def legacy_method(self) -> bool:
        """`method` has its meaning from before preference tuning: the adapter ("qlora"/"lora"), with sft."""
        return self.method in get_args(LegacyMethod)

    @property
    def training_method(self) -> str:
        """The method in today's terms (a legacy "qlora"/"lora" is sft)."""
        return DEFAULT_METHOD if self.legacy_method else self.method

    @property
    def adapter_type(self) -> str:
        return self.method if self.legacy_method else self.adapter

    def normalised(self) -> dict[str, Any]:
        """The request as stored and fingerprinted (idempotency): defaults filled in, the webhook and resume
        fields only when given (older bodies keep their fingerprint)."""
        out: dict[str, Any] = {
            "model": self.model,
            "training_file": self.training_file,
            "validation_file": self.validation_file or None,
            "hyperparameters": self.hyperparameters.model_dump(),
            "method": self.training_method,
            "adapter": self.adapter_type,
            "suffix": self.suffix,
            "seed": self.seed,
            "metadata": dict(self.metadata),
        }
        if self.webhook_url is not None:
            out["webhook_url"] = self.webhook_url
            if self.webhook_events is not None:
                out["webhook_events"] = [e for e in WEBHOOK_EVENTS if e in self.webhook_events]
        if self.resume_on_restart:
            out["resume_on_restart"] = True
        if self.num_gpus != 1:
            out["num_gpus"] = self.num_gpus
        if self.distributed != "ddp":
            out["distributed"] = self.distributed
        if self.from_checkpoint is not None:
            out["from_checkpoint"] = self.from_checkpoint
        if self.integrations:
            out["integrations"] = [i.model_dump() for i in self.integrations]
        if self.priority:
            out["priority"] = self.priority
        if self.max_runtime_seconds is not None:
            out["max_runtime_seconds"] = self.max_runtime_seconds
        if self.auto_retry:
            out["auto_retry"] = self.auto_retry
        return out


# ---- the job ---------------------------------------------------------------------------------------------


class TrainingMetrics(ResponseModel):
    """A job's latest training progress, as the trainer reported it."""

    progress: Annotated[float, Field(ge=0, le=1)]
    current_step: int | None
    total_steps: int | None
    current_epoch: int | None
    """The 1-based epoch in progress"""
    total_epochs: int | None
    train_loss: float | None
    eval_loss: float | None
    train_token_accuracy: float | None
    """Share of the trained tokens predicted right (argmax), over the latest logging window"""
    eval_token_accuracy: float | None
    """The same over the validation file, at the latest evaluation"""
    learning_rate: float | None
    tokens_per_second: float | None
    eta_seconds: float | None
    rewards_margin: float | None
    """A preference job's chosen minus rejected reward, over the latest logging window (null for sft)"""
    rewards_accuracy: float | None
    """A preference job's share of pairs whose chosen answer has the higher reward, over that window"""
    eval_rewards_margin: float | None
    """The same margin over the validation pairs, at the latest evaluation"""
    eval_rewards_accuracy: float | None


class JobError(ResponseModel):
    """Why a job failed."""

    code: str
    message: str
    param: str | None
    exit_code: int | None
    """The trainer's exit status (its protocol code when it reported one)"""
    signal: str | None
    """The signal that killed the trainer, by name (e.g. "SIGKILL"; "signal N" for a number without one)"""
    log_tail: list[str]
    """The last lines of the trainer's output"""
    hint: str | None = None
    data_code: str | None = None
    """A data-file problem's code (e.g. "invalid_json")"""
    line: int | None = None
    """A data-file problem's 1-based line"""
    checkpoint_path: str | None = None
    """The last checkpoint of an interrupted trainer"""


class TuningJob(ResponseModel):
    """A fine-tuning job (docs/api.md, "The job object")."""

    id: Annotated[str, Field(examples=["ftjob-3f2c9a0e8b7d4c1a9e6f0b2d"])]
    object: Literal["tuning.job"]
    status: JobStatus
    model: str
    fine_tuned_model: str | None
    adapter_path: str | None
    training_file: str
    validation_file: str | None
    method: Method
    """sft, dpo, orpo or simpo"""
    adapter: Adapter
    """qlora or lora"""
    from_checkpoint: str | None
    """The adapter the job started from (as given on create: JOB_ID, JOB_ID:STEP or ftckpt-...); null for a
    fresh adapter"""
    hyperparameters: Hyperparameters
    """The requested values with defaults filled in; the resolved ones ("auto" replaced) once the trainer
    has started"""
    suffix: str | None
    seed: int
    metadata: dict[str, str]
    resume_on_restart: bool
    num_gpus: int
    """GPUs (training processes) the job runs on: 1 on a service without GPUs"""
    distributed: Literal["ddp", "fsdp"]
    created_at: int
    """Unix seconds"""
    started_at: int | None
    finished_at: int | None
    duration: float | None
    """Seconds from started_at to finished_at"""
    queue_position: Annotated[int, Field(ge=1)] | None
    trained_tokens: int | None
    error: JobError | None
    metrics: TrainingMetrics | None
    integrations: list[Integration]
    """The experiment trackers the trainer logs to"""
    priority: int
    max_runtime_seconds: int | None
    """The job's own limit, or the service's default when it was created (null: none)"""
    auto_retry: int
    retries: int
    """Automatic retries used so far (each one a `retry` record)"""
    webhook_url: str | None = None
    """Only on jobs created with a webhook_url"""
    webhook_events: list[WebhookEvent] | None = None
    """Only on jobs created with a webhook_url"""


class TuningEstimate(ResponseModel, Estimate):
    """What a create with "dry_run": true answers: the job as the trainer would run it, with no job made.
    The fields it shares with the trainer's `started` record are computed by the same code (runplan.py)."""

    object: Literal["tuning.estimate"]
    model: str
    method: Method
    adapter: Adapter
    estimated_seconds: float | None
    """Input tokens to process ÷ the median tokens/s of this service's latest succeeded jobs of the same
    model shape, method, device and process count; null where it has run none"""
    based_on_jobs: int
    """How many past jobs estimated_seconds comes from"""


class TuningJobList(Page):
    data: list[TuningJob]


class DeletedTuningJob(ResponseModel):
    id: str
    object: Literal["tuning.job"]
    deleted: Literal[True]


# ---- records ---------------------------------------------------------------------------------------------


class _Sequenced(ResponseModel):
    """A record as the API shows it: numbered in the job's order. Readers ignore fields they do not know
    (a newer trainer may write more)."""

    model_config = ConfigDict(extra="allow")

    seq: Annotated[int, Field(ge=1)]
    """1, 2, 3... per job: resume a stream after it (Last-Event-ID, after=)"""


# The trainer's records (tuning_trainer/records.py, docs/trainer-protocol.md), derived: every field but type
# and time optional here, as the service relays what the trainer wrote.
StartedRecord = lenient(records.Started, name="StartedRecord", base=_Sequenced)
MetricsRecord = lenient(records.Metrics, name="MetricsRecord", base=_Sequenced)
EvalRecord = lenient(records.Eval, name="EvalRecord", base=_Sequenced)
CheckpointRecord = lenient(records.Checkpoint, name="CheckpointRecord", base=_Sequenced)
CompletedRecord = lenient(records.Completed, name="CompletedRecord", base=_Sequenced)
FailedRecord = lenient(records.Failed, name="FailedRecord", base=_Sequenced)
InterruptedRecord = lenient(records.Interrupted, name="InterruptedRecord", base=_Sequenced)


class StatusRecord(_Sequenced):
    """The job's status changed (every change has one; the terminal one is the stream's last record)."""

    type: Literal["status"]
    time: float
    status: JobStatus
    message: str | None = None


class LogLineRecord(_Sequenced):
    """A line of the trainer's output (stdout and stderr), or the service's note about its records."""

    type: Literal["log"]
    time: float
    line: str


class WebhookRecord(_Sequenced):
    """An attempt to deliver a webhook event of this job (docs/api.md, Webhooks)."""

    type: Literal["webhook"]
    time: float
    delivery_id: str
    event: WebhookEvent
    url: str
    attempt: int
    outcome: Literal["delivered", "retrying", "failed", "gave_up"]
    status_code: int | None
    error: str | None
    duration_ms: float
    next_attempt_at: float | None


class ResumedAfterRestartRecord(_Sequenced):
    """The service restarted without the trainer: the job (resume_on_restart) was queued again to continue
    from this checkpoint."""

    type: Literal["resumed_after_restart"]
    time: float
    step: int
    checkpoint: str


WarningRecord = lenient(records.RunWarning, name="WarningRecord", base=_Sequenced)


class RetryRecord(_Sequenced):
    """An infrastructure failure of the job's run (auto_retry): the job was queued again to continue from
    its newest checkpoint."""

    type: Literal["retry"]
    time: float
    attempt: int
    """1 for the first retry"""
    max_retries: int
    """The job's auto_retry"""
    reason: str
    """The failure's code: trainer_crashed, trainer_killed, out_of_memory, service_restart, ..."""
    message: str
    step: int | None
    """The checkpoint's step the next run starts from (null: from the beginning)"""
    checkpoint: str | None
    batch_size: int | None = None
    """Out of memory: the smaller micro-batch the next run uses"""


class LogRecord(RootModel[Any]):
    """One record of a job: the trainer's (started, metrics, eval, checkpoint, completed, failed,
    interrupted: docs/trainer-protocol.md) or the service's (status changes, `log` lines of the trainer's
    output, webhook attempts, resumed_after_restart), by its `type`."""

    root: Annotated[
        StartedRecord  # type: ignore[valid-type]
        | MetricsRecord  # type: ignore[valid-type]
        | EvalRecord  # type: ignore[valid-type]
        | CheckpointRecord  # type: ignore[valid-type]
        | CompletedRecord  # type: ignore[valid-type]
        | FailedRecord  # type: ignore[valid-type]
        | InterruptedRecord  # type: ignore[valid-type]
        | WarningRecord  # type: ignore[valid-type]
        | StatusRecord
        | LogLineRecord
        | WebhookRecord
        | ResumedAfterRestartRecord
        | RetryRecord,
        Field(discriminator="type"),
    ]


# The types LogRecord's union knows (tests/service/schema/test_document.py checks that they agree).
RecordType = Literal[
    "started", "metrics", "eval", "checkpoint", "completed", "failed", "interrupted", "warning",  # trainer
    "status", "log", "webhook", "resumed_after_restart", "retry",  # the service's
]  # fmt: skip


class LogEvent(ResponseModel):
    """One Server-Sent Event of `tunings.logs?follow=true`: a record. The stream opens with `retry: 2000`
    and sends `: heartbeat` comments during silence; it ends after the `status` record that makes the job
    terminal."""

    id: Annotated[str, Field(pattern=r"^[0-9]+$")]
    """The record's seq: send it back as Last-Event-ID to resume after it"""
    event: RecordType
    """The record's type"""
    data: Annotated[
        str,
        Field(
            json_schema_extra={
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": "#/components/schemas/LogRecord"},
            }
        ),
    ]
    """The record (a LogRecord) as one line of JSON"""
    retry: int | None = None


class LogPage(ResponseModel):
    object: Literal["list"]
    data: list[LogRecord]
    has_more: bool
    last_seq: int


class CheckpointMetrics(ResponseModel):
    """The last values reported at or before the checkpoint's step."""

    step: int
    train_loss: float | None
    train_token_accuracy: float | None
    learning_rate: float | None
    epoch: float | None
    eval_loss: float | None
    """At this step, over the whole validation file (null when there was no evaluation at this step)"""
    eval_token_accuracy: float | None


class Checkpoint(ResponseModel):
    """A checkpoint a job saved (still on disk)."""

    object: Literal["tuning.checkpoint"]
    id: str
    job_id: str
    step: int
    created_at: int
    path: str
    """Relative to the job's folder"""
    metrics: CheckpointMetrics


class CheckpointList(ResponseModel):
    object: Literal["list"]
    data: list[Checkpoint]
    has_more: bool


class Health(ResponseModel):
    status: Literal["healthy"]
    version: str
    uptime: float
    """Seconds since start"""
    active_jobs: int
    """Unfinished jobs that are not paused: queued or holding a trainer"""
    running_jobs: int
    """Jobs holding a trainer (running, cancelling, pausing)"""
    queued_jobs: int
    """Jobs waiting for a slot"""
    paused_jobs: int
    """Paused jobs: no trainer, no slot; resume queues them again"""
    total_jobs: int


# ---- query strings ---------------------------------------------------------------------------------------


class NoQuery(QueryModel):
    """A route without query parameters: any is refused (a typo must not be silently ignored)."""


class ListJobsQuery(QueryModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    after: Cursor = None
    status: JobStatus | None = None
    """Only jobs in this status"""


class LogsQuery(QueryModel):
    after: Annotated[int, Field(ge=0, le=MAX_SEQ)] = 0
    """Records after this sequence number"""
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    follow: bool = False
    """Server-Sent Events instead of a page: live until the job ends"""


class EventsQuery(QueryModel):
    after: Annotated[int, Field(ge=0, le=MAX_SEQ)] = 0
    """Records after this sequence number"""
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class DownloadQuery(QueryModel):
    artifact: Literal["adapter", "tensorboard"] = "adapter"
    """What to download: the adapter (final, or a checkpoint's), or the TensorBoard event files of a job
    created with the tensorboard integration"""
    checkpoint: Annotated[int, Field(ge=0, le=MAX_STEP)] | None = None
    """A checkpoint step (see the checkpoints); without it, the final adapter. Adapters only: with
    artifact=tensorboard it is refused (422 checkpoint_not_applicable)"""

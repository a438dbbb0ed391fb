"""OpenAI's fine-tuning shapes (docs/openai-compat.md), derived from the native ones wherever they agree.

`OpenAIHyperparameters` is this service's `Hyperparameters` under OpenAI's names (`n_epochs`,
`learning_rate_multiplier`), built from its fields, so a new hyperparameter appears on both surfaces.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_type_hints

from pydantic import Field, create_model, model_validator

from tuning_trainer.config import Adapter, Hyperparameters, Integration, Integrations, Method, Seed
from tuning_trainer.schema import StrictModel, cross_field

from .base import Page, QueryModel, RequestBody, ResponseModel
from .jobs import (
    MAX_CURSOR_CHARS,
    AutoRetry,
    CreateTuningRequest,
    Cursor,
    Distributed,
    DryRun,
    FileRef,
    FromCheckpoint,
    MaxRuntimeSeconds,
    Metadata,
    ModelName,
    NumGpus,
    Priority,
    Suffix,
)

# learning_rate_multiplier scales our default learning rate; the result is at most 1, like ours.
BASE_LEARNING_RATE: float = Hyperparameters.model_fields["learning_rate"].default
MAX_LEARNING_RATE_MULTIPLIER = 1 / BASE_LEARNING_RATE
# Cursor ids: `ftevent-<job>-<seq>` and `ftckpt-<job>-<step>`; the number is bounded so that it always fits
# SQLite's 64-bit integers.
EVENT_ID_PATTERN = r"^ftevent-[A-Za-z0-9_-]+-[0-9]{1,18}$"
CHECKPOINT_ID_PATTERN = r"^ftckpt-[A-Za-z0-9_-]+-[0-9]{1,18}$"
OpenAIStatus = Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]


class _NoBoth(StrictModel):
    @model_validator(mode="after")
    def _one_learning_rate(self) -> Any:
        fields = self.model_fields_set
        if "learning_rate" in fields and "learning_rate_multiplier" in fields:
            raise cross_field(
                "learning_rate_multiplier",
                "give either {parent}.learning_rate_multiplier or {parent}.learning_rate, not both",
            )
        return self


def _native(name: str) -> tuple[Any, Any]:
    """A native hyperparameter as a field of another model: its full annotation (limits in their order)
    with its default and description."""
    f = Hyperparameters.model_fields[name]
    return _HINTS[name], Field(f.default, description=f.description)


_HINTS = get_type_hints(Hyperparameters, include_extras=True)
OpenAIHyperparameters = create_model(  # type: ignore[call-overload]
    "OpenAIHyperparameters",
    __base__=_NoBoth,
    __doc__="OpenAI's names (n_epochs, batch_size, learning_rate_multiplier: a multiple of the default "
    "learning rate); this service's own hyperparameters are accepted as well, except `epochs` (send "
    "n_epochs). Give learning_rate or learning_rate_multiplier, not both.",
    n_epochs=_native("epochs"),
    **{name: _native(name) for name in Hyperparameters.model_fields if name != "epochs"},
    learning_rate_multiplier=(
        Annotated[float, Field(gt=0, le=MAX_LEARNING_RATE_MULTIPLIER)] | Literal["auto"],
        Field(
            "auto",
            description=f"A multiple of the default learning rate ({BASE_LEARNING_RATE:g}); 'auto': that "
            "rate",
        ),
    ),
)
OpenAIHyperparameters.model_config["json_schema_extra"] = {
    "not": {"required": ["learning_rate", "learning_rate_multiplier"]}
}
OpenAIHyperparameters.model_rebuild(force=True)


# DPO's hyperparameters: OpenAI's `beta` (this service's dpo_beta) beside the supervised ones.
OpenAIDpoHyperparameters = create_model(  # type: ignore[call-overload]
    "OpenAIDpoHyperparameters",
    __base__=OpenAIHyperparameters,
    __doc__="The supervised hyperparameters, and beta (this service's dpo_beta).",
    beta=_native("dpo_beta"),
)
OpenAIDpoHyperparameters.model_config["json_schema_extra"] = OpenAIHyperparameters.model_config[
    "json_schema_extra"
]
OpenAIDpoHyperparameters.model_rebuild(force=True)


class OpenAISupervised(StrictModel):
    hyperparameters: OpenAIHyperparameters | None = None  # type: ignore[valid-type]


class OpenAIDpo(StrictModel):
    hyperparameters: OpenAIDpoHyperparameters | None = None  # type: ignore[valid-type]


# A method's settings object is given (null is the same as leaving it out).
_GIVEN: dict[str, Any] = {
    name: {"required": [name], "properties": {name: {"type": "object"}}} for name in ("supervised", "dpo")
}


class OpenAIMethod(StrictModel):
    model_config = {
        **StrictModel.model_config,
        "json_schema_extra": {
            # Each type's settings sit under its own name ({"type": "dpo", "dpo": {...}}); without a type,
            # the settings given say which it is.
            "allOf": [
                {"if": _GIVEN["supervised"], "then": {"properties": {"type": {"const": "supervised"}}}},
                {"if": _GIVEN["dpo"], "then": {"properties": {"type": {"const": "dpo"}}}},
                {"not": {"allOf": [_GIVEN["supervised"], _GIVEN["dpo"]]}},
            ]
        },
    }

    @model_validator(mode="before")
    @classmethod
    def _type_from_settings(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data and data.get("dpo") is not None:
            return {**data, "type": "dpo"}
        return data

    type: Annotated[
        Literal["supervised", "dpo"],
        Field(
            description="supervised (SFT) or dpo (preference pairs) of a LoRA/QLoRA adapter",
            json_schema_extra={
                "x-rule": '"supervised" or "dpo": this service trains LoRA/QLoRA adapters by supervised '
                "fine-tuning or DPO (reinforcement fine-tuning is not supported)"
            },
        ),
    ] = "supervised"
    supervised: OpenAISupervised | None = None
    dpo: OpenAIDpo | None = None

    @model_validator(mode="after")
    def _settings_of_the_type(self) -> OpenAIMethod:
        if self.supervised is not None and self.type != "supervised":
            raise cross_field("supervised", '{parent}.supervised is for type "supervised"; send {parent}.dpo')
        if self.dpo is not None and self.type != "dpo":
            raise cross_field("dpo", '{parent}.dpo is for type "dpo"; set {parent}.type to "dpo"')
        return self


class OpenAICreateJob(RequestBody):
    """The body of POST /v1/fine_tuning/jobs."""

    model: ModelName
    training_file: FileRef
    validation_file: FileRef | Literal[""] | None = None
    hyperparameters: OpenAIHyperparameters | None = None  # type: ignore[valid-type]
    method: OpenAIMethod | None = None
    suffix: Suffix | None = None
    seed: Seed = CreateTuningRequest.model_fields["seed"].default
    metadata: Metadata = {}
    integrations: Integrations = []
    """Experiment trackers, OpenAI's shape for wandb; mlflow and tensorboard as on the native create"""
    tuning_method: Adapter | None = None
    """Extension: the adapter, qlora (default) or lora"""
    from_checkpoint: FromCheckpoint | None = None
    """Extension: start from another job's adapter (see the native create; an OpenAI checkpoint id works)"""
    resume_on_restart: bool = False
    """Extension: see the native create"""
    num_gpus: NumGpus = 1
    """Extension: see the native create"""
    distributed: Distributed = "ddp"
    """Extension: see the native create"""
    priority: Priority = 0
    """Extension: see the native create"""
    max_runtime_seconds: MaxRuntimeSeconds | None = None
    """Extension: see the native create"""
    auto_retry: AutoRetry = 0
    """Extension: see the native create"""
    dry_run: DryRun = False
    """Extension: see the native create (the answer is the native tuning.estimate)"""

    def to_native(self) -> CreateTuningRequest:
        """The same job as a native create request. Every value was validated here (the learning rate a
        multiplier gives is at most 1 by its limit), so nothing is parsed again."""
        values: dict[str, Any] = {}
        method = self.method or OpenAIMethod()
        settings = method.dpo if method.type == "dpo" else method.supervised
        for hp in (self.hyperparameters, settings.hyperparameters if settings else None):
            if hp is None:
                continue
            for name in hp.model_fields_set:
                value = getattr(hp, name)
                if name == "beta":
                    values["dpo_beta"] = value
                elif name == "n_epochs":
                    values["epochs"] = value
                elif name == "learning_rate_multiplier":
                    if value != "auto":
                        values["learning_rate"] = min(1.0, value * BASE_LEARNING_RATE)
                else:
                    values[name] = value
        native: dict[str, Any] = {
            "model": self.model,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "hyperparameters": Hyperparameters.model_construct(**values),
            "suffix": self.suffix,
            "seed": self.seed,
            "metadata": self.metadata,
            "resume_on_restart": self.resume_on_restart,
            "num_gpus": self.num_gpus,
            "distributed": self.distributed,
            "dry_run": self.dry_run,
            "method": "dpo" if method.type == "dpo" else "sft",
            "from_checkpoint": self.from_checkpoint,
            "integrations": self.integrations,
            "priority": self.priority,
            "max_runtime_seconds": self.max_runtime_seconds,
            "auto_retry": self.auto_retry,
        }
        if self.tuning_method is not None:
            native["adapter"] = self.tuning_method
        return CreateTuningRequest.model_construct(**native)


# ---- objects ---------------------------------------------------------------------------------------------

_NumberOrAuto = int | float | Literal["auto"]


class OpenAIJobHyperparameters(ResponseModel):
    n_epochs: _NumberOrAuto
    batch_size: _NumberOrAuto
    learning_rate_multiplier: _NumberOrAuto


class OpenAIJobError(ResponseModel):
    code: str | None
    message: str | None
    param: str | None


class OpenAIJobDpoHyperparameters(OpenAIJobHyperparameters):
    beta: _NumberOrAuto


class OpenAIJobSupervised(ResponseModel):
    hyperparameters: OpenAIJobHyperparameters


class OpenAIJobDpo(ResponseModel):
    hyperparameters: OpenAIJobDpoHyperparameters


class OpenAIJobMethod(ResponseModel):
    type: Literal["supervised", "dpo", "orpo", "simpo"]
    """orpo and simpo: jobs made with the native create (OpenAI has no such type)"""
    supervised: OpenAIJobSupervised | None = None
    dpo: OpenAIJobDpo | None = None
    orpo: OpenAIJobDpo | None = None
    simpo: OpenAIJobDpo | None = None


class OpenAIJobExtension(ResponseModel):
    """What OpenAI's object has no field for: this service's status, the adapter method, the live metrics,
    the GPUs."""

    status: str
    method: Method
    adapter: Adapter
    from_checkpoint: str | None
    metrics: dict[str, Any] | None
    num_gpus: int
    distributed: Literal["ddp", "fsdp"]
    priority: int
    max_runtime_seconds: int | None
    auto_retry: int
    retries: int


class OpenAIJob(ResponseModel):
    object: Literal["fine_tuning.job"]
    id: str
    model: str
    created_at: int
    finished_at: int | None
    fine_tuned_model: Annotated[str | None, Field(examples=["ft:tiny-llama:key_ab12:demo:ftjob-..."])]
    organization_id: str
    result_files: list[str]
    status: OpenAIStatus
    training_file: str
    validation_file: str | None
    hyperparameters: OpenAIJobHyperparameters
    trained_tokens: int | None
    error: OpenAIJobError | None
    seed: int
    estimated_finish: int | None
    integrations: list[Integration]
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    method: OpenAIJobMethod
    tuning: OpenAIJobExtension


class OpenAIEvent(ResponseModel):
    object: Literal["fine_tuning.job.event"]
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any]
    type: Literal["message", "metrics"]


class OpenAICheckpointMetrics(ResponseModel):
    step: int
    train_loss: float | None
    valid_loss: float | None
    full_valid_loss: float | None
    train_mean_token_accuracy: float | None
    valid_mean_token_accuracy: float | None
    full_valid_mean_token_accuracy: float | None


class OpenAICheckpoint(ResponseModel):
    object: Literal["fine_tuning.job.checkpoint"]
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: OpenAICheckpointMetrics


class OpenAIJobList(Page):
    data: list[OpenAIJob]


class OpenAIEventList(Page):
    data: list[OpenAIEvent]


class OpenAICheckpointList(Page):
    data: list[OpenAICheckpoint]


# ---- query strings ---------------------------------------------------------------------------------------


class OpenAIListFilesQuery(QueryModel):
    # OpenAI's default page is large; the cursor makes any size work.
    limit: Annotated[int, Field(ge=1, le=10000)] = 10000
    after: Cursor = None
    order: Literal["desc"] = "desc"
    """Newest first is the only order"""
    purpose: Literal["fine-tune"] | None = None


class OpenAIListJobsQuery(QueryModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    after: Cursor = None
    metadata: (
        Annotated[
            dict[Annotated[str, Field(min_length=1, max_length=64)], str],
            Field(json_schema_extra={"x-style": "deepObject"}),
        ]
        | None
    ) = None
    """metadata[KEY]=VALUE: only jobs with every given pair"""


def _cursor(pattern: str, what: str) -> Any:
    return Annotated[
        str | None,
        Field(
            max_length=MAX_CURSOR_CHARS,
            pattern=pattern,
            description=f"The last {what} id of the previous page (another job's gives an empty page)",
        ),
    ]


class OpenAIEventsQuery(QueryModel):
    limit: Annotated[int, Field(ge=1, le=1000)] = 20
    after: _cursor(EVENT_ID_PATTERN, "event") = None  # type: ignore[valid-type]


class OpenAICheckpointsQuery(QueryModel):
    limit: Annotated[int, Field(ge=1, le=1000)] = 10
    after: _cursor(CHECKPOINT_ID_PATTERN, "checkpoint") = None  # type: ignore[valid-type]

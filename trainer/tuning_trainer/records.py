"""The records of `events.jsonl`, one model per type: the trainer protocol's one definition
(docs/trainer-protocol.md's table is generated from these; the service's API documents its records as these).

The trainer writes plain dicts (events.py: one line, flushed, per record; no validation on the training loop's
path), and tests/trainer validates every record of real runs with these models, strictly: a field the trainer
adds or drops fails there until it is written here. Readers must still tolerate unknown fields and types
(an older service, a newer trainer): `lenient()` is a record's model for them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model

from .config import Adapter, Hyperparameters, JobConfig, Method
from .data import DataFormat
from .schema import StrictModel


class _Record(StrictModel):
    time: float
    """Unix seconds"""
    seq: int
    """1, 2, 3... within a run: a reader of a replayed stream drops the records it has (events.py)"""


class RunPlanFacts(StrictModel):
    """What a run will do, known before any weight is loaded (runplan.py): the `started` record reports
    these, and the dry run's estimate (estimate.py) reports the same values for the same job."""

    total_steps: int
    total_epochs: int
    steps_per_epoch: int
    num_examples: int
    """Training examples (a preference method's: pairs)"""
    num_eval_examples: int
    truncated_examples: int
    dropped_examples: int
    """Examples with no trainable token left after truncation"""
    num_tokens: int
    trainable_tokens: int
    """Tokens with a loss, over the training file (the rest are prompts, or other turns)"""
    padding_efficiency: float
    """Real tokens / token positions processed (padding included) over one epoch; 1.0 without padding"""
    micro_batch_tokens: int
    """Mean token positions per micro-batch (padding included)"""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"]
    """The attention kernel ("auto" resolved)"""
    resolved_auto: dict[str, Any]
    """What "auto" became, e.g. {"epochs": 5, "batch_size": 4}; {} when nothing was auto"""
    device: str
    """e.g. cpu, cuda:0 (NVIDIA H100 80GB HBM3)"""
    num_processes: int


class Started(_Record, RunPlanFacts):
    """A run starts (again, after a resume: `start_step` > 0). The last `started` and what follows it
    describe the current run."""

    type: Literal["started"]
    start_step: int
    """Non-zero on a resume"""
    format: DataFormat
    chat_template: Literal["model", "fallback"]
    trainable_params: int
    total_params: int
    model: dict[str, str]
    """kind (local or hub) and location"""
    method: Method
    adapter: Adapter
    model_setup: dict[str, Any]
    """Compute dtype, quantization, gradient checkpointing, parameter counts, the estimated peak memory and
    the model's shape"""
    config: JobConfig
    """The resolved job ("auto" replaced)"""
    versions: dict[str, str | None]
    """python, torch, transformers, peft, accelerate, bitsandbytes, tuning_trainer"""
    mixed_precision: str


class EstimateMemory(StrictModel):
    """Estimated peak memory per device (memory.py's formula, docs/trainer.md)."""

    peak_mb: int
    device_mb: int
    """The device's memory: a GPU's, or the machine's RAM on CPU"""
    fits: bool
    """The peak is within 95% of the device's memory"""
    breakdown_mb: dict[str, int]
    """weights, adapter, activation, attention, loss, overhead"""


class Estimate(RunPlanFacts):
    """The dry run's answer (python -m tuning_trainer.estimate)."""

    gradient_checkpointing: bool
    """Whether the run checkpoints activations ("auto" resolved by the memory estimate)"""
    tokens_to_process: int
    """Input tokens the run will process, every process and step included"""
    hyperparameters: Hyperparameters
    """The job's hyperparameters with "auto" resolved"""
    shape: dict[str, Any]
    """The model's dimensions (hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, tied)"""
    memory: EstimateMemory


class Metrics(_Record):
    """Every `logging_steps` optimizer steps, and at the last one."""

    type: Literal["metrics"]
    step: int
    total_steps: int
    epoch: float
    loss: float | None
    """Mean over the trained tokens of the steps since the previous metrics record (a preference method:
    over the pairs; null when not finite: a diverged loss)"""
    token_accuracy: float
    """Share of those tokens the model predicted right (argmax), over every process (a preference method:
    of the chosen answers' tokens)"""
    learning_rate: float
    """The rate this step trained at (0 on the first warm-up step, as HF logs it)"""
    grad_norm: float | None
    tokens_per_second: float
    tokens_seen: int
    elapsed_seconds: float
    eta_seconds: float
    peak_memory_mb: float
    """CUDA: max allocated; CPU: peak RSS of the process"""
    rewards_chosen: float | None = None
    """Preference methods: the mean implicit reward of the chosen answers over the same steps (dpo:
    β x (log π - log π_ref) of the answer; orpo, simpo: β x its mean token log-probability)"""
    rewards_rejected: float | None = None
    """The same for the rejected answers"""
    rewards_margin: float | None = None
    """rewards_chosen - rewards_rejected"""
    rewards_accuracy: float | None = None
    """Share of the pairs whose chosen answer has the higher reward"""


class Eval(_Record):
    """The validation loss, every `eval_steps` (or at each epoch's end) when there is a validation file."""

    type: Literal["eval"]
    step: int
    epoch: float
    eval_loss: float | None
    eval_token_accuracy: float
    """Share of the validation file's trained tokens predicted right (argmax)"""
    eval_rewards_chosen: float | None = None
    """Preference methods: rewards_chosen over the validation pairs"""
    eval_rewards_rejected: float | None = None
    eval_rewards_margin: float | None = None
    eval_rewards_accuracy: float | None = None


class Checkpoint(_Record):
    """A complete checkpoint is on disk (renamed into place last)."""

    type: Literal["checkpoint"]
    step: int
    path: str


class Completed(_Record):
    """The run ended with the adapter saved (a terminal record)."""

    type: Literal["completed"]
    adapter_path: str
    final_loss: float | None
    final_eval_loss: float | None
    """null without a validation file"""
    duration_seconds: float
    total_steps: int
    tokens_seen: int
    exit_code: Literal[0]


class Failed(_Record):
    """The run failed (a terminal record): `code` says why (invalid_config, invalid_data, model_not_found,
    model_unavailable, out_of_memory, training_error)."""

    type: Literal["failed"]
    code: str
    message: str
    exit_code: int
    hint: str | None = None
    """Out of memory: what to lower"""
    param: str | None = None
    """The config field (invalid_config)"""
    config_code: str | None = None
    """invalid_config: the config problem's own code (missing_field, unknown_field, not_found)"""
    data_code: str | None = None
    """invalid_data: the data problem's code (invalid_json, no_assistant_turn, ...)"""
    line: int | None = None
    """invalid_data: the 1-based line"""
    file: Literal["training_file", "validation_file"] | None = None
    """invalid_data: which file"""
    suggested_batch_size: int | None = None
    """out_of_memory: half the run's micro-batch size (batch_size, "auto" resolved) to retry with; null when
    it was already 1"""


class Interrupted(_Record):
    """A signal stopped the run after a checkpoint (a terminal record)."""

    type: Literal["interrupted"]
    step: int
    total_steps: int
    checkpoint_path: str
    signal: str
    """SIGTERM or SIGINT"""
    exit_code: Literal[4]


class RunWarning(_Record):
    """Something went wrong that does not stop the run (e.g. an experiment tracker failed: it is turned off
    for the rest of the run)."""

    type: Literal["warning"]
    code: str
    """e.g. tracker_failed"""
    message: str
    """What went wrong, on one line, e.g. "mlflow: could not start: ..." (never a credential)"""
    tracker: str | None = None
    """The tracker concerned (wandb, mlflow, tensorboard)"""


RECORDS: tuple[type[_Record], ...] = (
    Started, Metrics, Eval, Checkpoint, Completed, Failed, Interrupted, RunWarning
)  # fmt: skip
TrainerRecord = Annotated[
    Started | Metrics | Eval | Checkpoint | Completed | Failed | Interrupted | RunWarning,
    Field(discriminator="type"),
]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent, not null: "optional" is what is meant


def lenient(model: type[_Record], *, name: str, base: type[BaseModel]) -> Any:
    """The same record as its readers see it: every field but `type` and `time` optional (an older trainer
    may write less), `base`'s config (which should allow unknown fields: a newer trainer may write more).
    Derived from `model`, never written twice."""
    fields: dict[str, Any] = {}
    for field_name, f in model.model_fields.items():
        if field_name == "seq":
            continue  # the trainer's run-local number: a reader numbers the records it keeps itself
        if field_name in ("type", "time"):
            fields[field_name] = (f.annotation, f)
        else:
            optional = Field(None, description=f.description, json_schema_extra=_no_default)
            fields[field_name] = (f.annotation, optional)
    return create_model(name, __base__=base, __doc__=model.__doc__, **fields)

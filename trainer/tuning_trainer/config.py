"""The training job's schema: what a job is (model, data, method, seed, hyperparameters), one definition.

The trainer reads it from its `config.json` (or flags, cli.py); the service embeds the same `Hyperparameters`
(with their defaults and limits) in its create body, its `/openapi.json` and the dashboard's form, and
writes `config.json` from a job it has already validated. pydantic only: the service imports this module,
so nothing here may import torch, transformers or the rest of the ML stack.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import AfterValidator, Field, ValidationError, model_validator

from .schema import INTEGRAL, StrictModel, first_problem, json_schema

# How the adapter sits on the base: qlora (a 4-bit base) or lora.
Adapter = Literal["qlora", "lora"]
ADAPTERS: tuple[str, ...] = get_args(Adapter)
# What the adapter is trained for: supervised fine-tuning, or a preference objective on chosen/rejected pairs.
Method = Literal["sft", "dpo", "orpo", "simpo"]
METHODS: tuple[str, ...] = get_args(Method)
PREFERENCE_METHODS: tuple[str, ...] = ("dpo", "orpo", "simpo")
# Before preference tuning, `method` named the adapter; those values still mean SFT with that adapter.
LegacyMethod = Literal["qlora", "lora"]
# "auto" dpo_beta: each objective's own recommended strength (DPO's and ORPO's papers: 0.1; SimPO's: 2.0).
AUTO_BETA: Final = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0}
Scheduler = Literal[
    "linear", "cosine", "constant", "constant_with_warmup", "polynomial", "cosine_with_restarts"
]
SCHEDULERS: tuple[str, ...] = Scheduler.__args__  # type: ignore[attr-defined]
AUTO: Final = "auto"
DEFAULT_ADAPTER: Final = "qlora"
DEFAULT_METHOD: Final = "sft"
DEFAULT_SEED: Final = 42
MAX_SEED: Final = 2**32 - 1
# Step counts (max_steps, eval_steps, save_steps, logging_steps): a 32-bit bound, far beyond any run.
MAX_STEPS: Final = 2**31 - 1
MAX_TARGET_MODULES: Final = 256
MAX_MODULE_NAME_CHARS: Final = 256

Seed = Annotated[
    int,
    Field(ge=0, le=MAX_SEED, description="Random seed for the data order and the adapter's initialisation"),
    INTEGRAL,
]
ModuleName = Annotated[str, Field(min_length=1, max_length=MAX_MODULE_NAME_CHARS)]


class ConfigError(ValueError):
    """A job configuration that cannot run. `param` names the offending field (dotted path)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_config") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


# ---- experiment trackers (the create body's `integrations`; trackers.py logs to them) --------------------

MAX_TRACKER_NAME_CHARS: Final = 128
MAX_TRACKER_TAGS: Final = 64
MAX_TRACKER_TAG_CHARS: Final = 64  # W&B's own limit on a tag
MAX_TRACKER_URI_CHARS: Final = 2048
TrackerName = Annotated[
    str, Field(min_length=1, max_length=MAX_TRACKER_NAME_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")
]
# A remote MLflow server only: a `file:` or database URI would let a client write anywhere the trainer can.
# Without one the run goes to the service's TUNING_MLFLOW_TRACKING_URI, else to a file store in the job's
# folder.
# No user:password in it either: the job's URI is shown to its API key (the job object, its records); an
# MLflow server's credentials come from the trainer's environment (MLFLOW_TRACKING_TOKEN, ...).
MLFLOW_URI_PATTERN: Final = (
    r"^(https?://[^\x00-\x20\x7f-\x9f/@?#]+([/?#][^\x00-\x20\x7f-\x9f]*)?|databricks(://[A-Za-z0-9_.-]+)?)$"
)


class WandbSettings(StrictModel):
    """Where a W&B run goes (OpenAI's `integrations[].wandb`). The W&B API key is the API key's own, set on
    the server (`keys set-integration --wandb-api-key`); WANDB_MODE=offline in the service's environment
    writes the run into the job's folder instead."""

    project: TrackerName
    name: TrackerName | None = None
    """The run's display name (default: the job id)"""
    entity: TrackerName | None = None
    """The team or user (default: the key's W&B default entity)"""
    tags: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_TRACKER_TAG_CHARS)]],
        Field(max_length=MAX_TRACKER_TAGS),
    ] = []


class WandbIntegration(StrictModel):
    """Log the run to Weights & Biases."""

    type: Literal["wandb"]
    wandb: WandbSettings


class MlflowSettings(StrictModel):
    tracking_uri: (
        Annotated[
            str,
            Field(
                max_length=MAX_TRACKER_URI_CHARS,
                pattern=MLFLOW_URI_PATTERN,
                json_schema_extra={
                    "x-rule": "an http:// or https:// URL of an MLflow tracking server without "
                    "user:password, or databricks (never a file or database URI)"
                },
            ),
        ]
        | None
    ) = None
    """An MLflow tracking server (http(s)://... or databricks); default: the service's
    TUNING_MLFLOW_TRACKING_URI, else a file store in the job's folder (`mlruns/`)"""
    experiment: TrackerName = "tuning"
    """The MLflow experiment (made when missing)"""


class MlflowIntegration(StrictModel):
    """Log the run to MLflow."""

    type: Literal["mlflow"]
    mlflow: MlflowSettings = MlflowSettings()


class TensorboardIntegration(StrictModel):
    """Write TensorBoard event files into the job's folder (`tensorboard/`; download them with
    `tunings.download?artifact=tensorboard`)."""

    type: Literal["tensorboard"]


Integration = Annotated[
    WandbIntegration | MlflowIntegration | TensorboardIntegration, Field(discriminator="type")
]
TRACKER_TYPES: tuple[str, ...] = ("wandb", "mlflow", "tensorboard")


def _one_per_tracker(value: list[Any]) -> list[Any]:
    seen: set[str] = set()
    for item in value:
        if item.type in seen:
            raise ValueError(f"{item.type} is listed twice: give each tracker once")
        seen.add(item.type)
    return value


Integrations = Annotated[
    list[Integration],
    Field(
        max_length=len(TRACKER_TYPES),
        description="Experiment trackers the trainer logs the resolved config, every metric and every eval "
        "to (rank 0 only). A tracker that fails (package missing, server unreachable) costs a `warning` "
        "record, never the job",
        json_schema_extra={
            "x-rule": "at most one of each type: wandb, mlflow, tensorboard",
            # The same rule in JSON Schema's words, for generic validators and test-data generators.
            "allOf": [
                {"contains": {"properties": {"type": {"const": t}}}, "minContains": 0, "maxContains": 1}
                for t in TRACKER_TYPES
            ],
        },
    ),
    AfterValidator(_one_per_tracker),
]


class Hyperparameters(StrictModel):
    """Training hyperparameters (unknown names are refused). The seed spec's names (`epochs`, `learning_rate`,
    `batch_size`) come first; `"auto"` values are resolved from the number of training examples when the
    trainer starts (docs/trainer-protocol.md)."""

    epochs: Annotated[int, Field(ge=1, le=1000), INTEGRAL] | Literal["auto"] = AUTO
    """Passes over the training data; "auto": clamp(ceil(1500 / examples), 1, 5)"""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 2e-4
    """Peak AdamW learning rate"""
    batch_size: Annotated[int, Field(ge=1, le=4096), INTEGRAL] | Literal["auto"] = AUTO
    """Examples per micro-batch (per process); "auto": the largest power of two <= 2% of the examples, in
    [1, 8]"""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=4096), INTEGRAL] = 1
    """Micro-batches per optimizer step"""
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    """Fraction of the total steps spent warming the learning rate up"""
    lr_scheduler_type: Scheduler = "cosine"
    """Learning-rate schedule after the warm-up"""
    weight_decay: Annotated[float, Field(ge=0, le=10)] = 0.0
    """AdamW weight decay"""
    max_grad_norm: Annotated[float, Field(ge=0, le=1e6)] = 1.0
    """Gradient clipping norm (0 turns clipping off)"""
    max_seq_length: Annotated[int, Field(ge=8, le=1_048_576), INTEGRAL] = 1024
    """Tokens per example; longer examples are truncated"""
    max_steps: Annotated[int, Field(ge=1, le=MAX_STEPS), INTEGRAL] | None = None
    """Stop after this many optimizer steps (overrides epochs, as in HF; null: run every epoch)"""
    lora_r: Annotated[int, Field(ge=1, le=4096), INTEGRAL] = 16
    """LoRA rank"""
    lora_alpha: Annotated[int, Field(ge=1, le=65536), INTEGRAL] = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)"""
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Dropout on the LoRA branch (0 by default, as in Unsloth and torchtune: it costs a mask per layer and
    rarely helps a short fine-tune)"""
    lora_target_modules: (
        Annotated[str, Field(min_length=1, max_length=MAX_MODULE_NAME_CHARS)]
        | Annotated[list[ModuleName], Field(min_length=1, max_length=MAX_TARGET_MODULES)]
    ) = "all-linear"
    """"all-linear" (every linear layer except the output head) or a list of module names (flag:
    --lora-target-modules q_proj,v_proj)"""
    train_on_inputs: bool = False
    """Train on the prompt's tokens too (default: only the assistant's answer is trained on)"""
    eval_steps: Annotated[int, Field(ge=1, le=MAX_STEPS), INTEGRAL] | None = None
    """Evaluate every N optimizer steps (null: once per epoch when a validation file is given)"""
    save_steps: Annotated[int, Field(ge=1, le=MAX_STEPS), INTEGRAL] | None = None
    """Checkpoint every N optimizer steps (null: only when stopped, by SIGTERM/SIGINT, and at the end)"""
    logging_steps: Annotated[int, Field(ge=1, le=MAX_STEPS), INTEGRAL] = 1
    """Write a `metrics` record every N optimizer steps"""
    gradient_checkpointing: bool | Literal["auto"] = AUTO
    """Recompute activations in the backward pass to save memory; "auto": on only where the memory estimate
    without it exceeds 90% of the device's memory"""
    packing: bool = False
    """Fill each micro-batch with whole examples up to max_tokens_per_batch tokens (best fit), instead of
    batch_size examples; examples never attend to each other either way"""
    max_tokens_per_batch: Annotated[int, Field(ge=8, le=16_777_216), INTEGRAL] | Literal["auto"] = AUTO
    """Token budget of a packed micro-batch (packing only; an example longer than it trains alone);
    "auto": batch_size x max_seq_length"""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = AUTO
    """Attention kernel; "auto": flash_attention_2 on a GPU where flash-attn is installed, else sdpa"""
    torch_compile: bool = False
    """Compile the model with torch.compile (slower first steps, faster later ones)"""
    dpo_beta: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] = AUTO
    """Preference methods: dpo, how far the policy may move from the reference (β of the DPO loss); orpo,
    the weight of the odds-ratio term (λ); simpo, the reward scale (β). "auto" (as OpenAI's beta): the
    method's recommended value, 0.1 for dpo and orpo, 2.0 for simpo (which scales a mean token
    log-probability, not a sum)"""
    simpo_gamma_beta_ratio: Annotated[float, Field(ge=0, le=10)] = 0.5
    """simpo only: the target reward margin γ as a multiple of dpo_beta (γ = ratio x β)"""
    dpo_reference: Literal["base", "initial"] = "base"
    """dpo only, for a job started from an adapter (from_checkpoint): the reference policy is the base with
    the adapter disabled ("base"), or a frozen copy of the starting adapter ("initial", the SFT model of an
    SFT-then-DPO pipeline; r-sized weights, not a second model). Without a starting adapter both are the
    base"""


class JobConfig(StrictModel):
    """A job as the trainer runs it (its config.json)."""

    model: Annotated[str, Field(min_length=1)]
    """A local directory, a folder name under $TUNING_MODELS_DIR, or a hub id"""
    training_file: Annotated[str, Field(min_length=1)]
    """JSONL training data"""
    output_dir: Annotated[str, Field(min_length=1)]
    """Where events.jsonl, checkpoints and the adapter go"""
    validation_file: Annotated[str, Field(min_length=1)] | None = None
    """JSONL validation data (eval loss)"""
    method: Method = DEFAULT_METHOD
    """sft (supervised, on chat/completion/text/alpaca data) or a preference objective on pairs: dpo, orpo,
    simpo ("qlora" and "lora" are read as sft with that adapter, their meaning before preference tuning)"""
    adapter: Adapter = DEFAULT_ADAPTER
    """qlora (a 4-bit base) or lora"""
    seed: Seed = DEFAULT_SEED
    resume_from: Annotated[str, Field(min_length=1)] | None = None
    """A checkpoints/checkpoint-N directory to continue from"""
    init_adapter: Annotated[str, Field(min_length=1)] | None = None
    """An adapter folder (a job's adapter, or a checkpoint's) whose weights and LoRA shape the run starts
    from, with a fresh optimizer and schedule (the service's from_checkpoint)"""
    hyperparameters: Hyperparameters = Hyperparameters()
    integrations: Integrations = []
    """Experiment trackers to log to (rank 0); the run is named after the output folder (the job id)"""
    mlflow_tracking_uri: Annotated[str, Field(min_length=1)] | None = None
    """The service's MLflow server for an `mlflow` integration without its own tracking_uri (default: a
    file store in output_dir/mlruns)"""

    @model_validator(mode="before")
    @classmethod
    def _legacy_method(cls, data: Any) -> Any:
        return legacy_method(data)

    @property
    def preference(self) -> bool:
        return self.method in PREFERENCE_METHODS

    # ---- (de)serialisation -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobConfig:
        """Build and validate a config. Raises ConfigError naming the field on any problem."""
        if not isinstance(data, Mapping):
            raise ConfigError("config must be a JSON object", param=None)
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise config_error(exc, _JOB_SCHEMA) from None

    @classmethod
    def from_file(cls, path: str | Path) -> JobConfig:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}", param="config", code="not_found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file is not valid JSON: {exc}", param="config") from None
        return cls.from_dict(raw)


def legacy_method(data: Any) -> Any:
    """A job mapping with the old meaning of `method` (the adapter: "qlora" or "lora") in today's terms:
    `method: "sft"` and that `adapter`. Anything else is returned as it is."""
    if isinstance(data, Mapping) and data.get("method") in ADAPTERS and "adapter" not in data:
        return {**data, "method": DEFAULT_METHOD, "adapter": data["method"]}
    return data


_JOB_SCHEMA = json_schema(JobConfig)
_HP_SCHEMA = json_schema(Hyperparameters)
_CODES = {"missing": "missing_field", "unknown_field": "unknown_field"}


def config_error(exc: ValidationError, schema: Mapping[str, Any], *, prefix: str = "") -> ConfigError:
    problem = first_problem(exc, schema, prefix=prefix)
    return ConfigError(problem.message, param=problem.param, code=_CODES.get(problem.kind, "invalid_config"))


def parse_hyperparameters(data: Mapping[str, Any]) -> Hyperparameters:
    """Validate a hyperparameters mapping; unknown names and out-of-range values raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError("hyperparameters must be an object", param="hyperparameters")
    try:
        return Hyperparameters.model_validate(dict(data))
    except ValidationError as exc:
        raise config_error(exc, _HP_SCHEMA, prefix="hyperparameters") from None


def resolve_auto(
    hp: Hyperparameters, num_examples: int, method: str = DEFAULT_METHOD
) -> tuple[Hyperparameters, dict[str, Any]]:
    """Resolve "auto" epochs and batch size from the number of training examples (pairs, for a preference
    method), and "auto" dpo_beta from the method.

    The documented rule (docs/trainer-protocol.md):
      - epochs = clamp(ceil(1500 / num_examples), 1, 5): small sets get more passes, large sets one to a few;
      - batch_size = largest power of two <= 2% of the examples, clamped to [1, 8];
      - max_tokens_per_batch (with packing) = batch_size x max_seq_length;
      - dpo_beta = the method's recommended value (AUTO_BETA).
    Returns the hyperparameters with them resolved and what was resolved, e.g. {"epochs": 5, "batch_size": 4}.
    """
    n = max(1, num_examples)
    resolved: dict[str, Any] = {}
    if hp.epochs == AUTO:
        resolved["epochs"] = max(1, min(5, math.ceil(1500 / n)))
    if hp.batch_size == AUTO:
        target = max(1, min(8, int(n * 0.02)))
        resolved["batch_size"] = 1 << (target.bit_length() - 1)
    if hp.packing and hp.max_tokens_per_batch == AUTO:
        per_unit = 2 if method in PREFERENCE_METHODS else 1  # a pair is two sequences
        resolved["max_tokens_per_batch"] = (
            per_unit * resolved.get("batch_size", hp.batch_size) * hp.max_seq_length
        )
    if hp.dpo_beta == AUTO and method in PREFERENCE_METHODS:
        resolved["dpo_beta"] = AUTO_BETA[method]
    return hp.model_copy(update=resolved), resolved

"""Service settings: environment variables `TUNING_<NAME>`, read once, through one mechanism
(pydantic-settings).

Each setting is one field here, with its type, default and meaning; docs/service.md's table is checked against
these fields by a test. A malformed value is an error naming the variable (python -m tuning_service prints it
without a traceback). Tests and tools may also pass values by field name: `Settings(data_dir=...)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_KEYS = ("test-key-001", "test-key-002")
PREFIX = "TUNING_"

CommaList = Annotated[list[str], NoDecode]


def _env(name: str) -> Any:
    """A field read from TUNING_<name> (when the variable's name is not simply the field's)."""
    return AliasChoices(PREFIX + name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_ignore_empty=True,  # TUNING_X= (empty) is the default, as if unset
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )

    data_dir: Path = Path(".tuning")
    """SQLite database, job folders (config, `events.jsonl`, `output.log`, checkpoints, adapter), the service
    log"""
    files_root: Path = Field(default_factory=Path.cwd)
    """Where `training_file` / `validation_file` paths resolve; nothing outside it can be read"""
    models_dir: Path = Path("models")
    """A `model` name found here is used as a local model (`models/<name>`)"""
    api_keys: CommaList = []
    """Comma-separated API keys (hashed in memory). Empty: the keys made with `keys create`, or the
    development keys when there are none"""
    max_concurrent_jobs: int = 1
    """Trainers running at once"""
    gpus: CommaList = []
    """Comma-separated GPU ids to lease to jobs (`CUDA_VISIBLE_DEVICES`); empty: CPU"""
    cpu_processes: Annotated[int, Field(ge=1, le=64)] = 1
    """Without GPUs: training processes per job (gloo ranks sharing the CPU threads); more than 1 runs the
    multi-GPU code path on CPU, for testing it without GPUs"""
    cancel_grace_seconds: float = 30.0
    """After SIGTERM, how long a trainer may take to checkpoint before SIGKILL"""
    log_level: str = "INFO"
    """Service log level"""
    max_request_bytes: int = 1024 * 1024
    """Request bodies over this get 413 (file uploads have their own limit)"""
    max_file_bytes: int = 512 * 1024 * 1024
    """Largest data file (upload or path)"""
    max_line_bytes: int = 1024 * 1024
    """Longest line of a data file; over it -> 422 naming the line"""
    max_rows: int = 1_000_000
    """Most examples in a data file"""
    rate_limit_rps: float = 50.0
    """Per-API-key requests per second on average (429 with Retry-After beyond); 0 turns the limit off"""
    rate_limit_burst: int = 200
    """Per-API-key burst"""
    heartbeat_seconds: float = 15.0
    """Silence on a log stream before a heartbeat comment"""
    poll_interval_seconds: float = Field(default=0.05, validation_alias=_env("POLL_INTERVAL"))
    """How often the supervisor tails a running job's files"""
    trainer_command: str = ""
    """A JSON list replacing `python -m accelerate.commands.launch [flags] -m tuning_trainer` (tests: a fake
    trainer); empty: the real trainer"""
    cpu_threads: int = 0
    """CPU threads per trainer without GPUs; 0: the CPU count divided among the concurrent jobs"""
    supervisor_stale_seconds: float = 15.0
    """A worker whose supervision heartbeat is this old is presumed dead and its jobs are adopted"""
    schedule_interval_seconds: float = Field(default=0.5, validation_alias=_env("SCHEDULE_INTERVAL"))
    """How often the scheduler looks for jobs queued through another worker"""
    metrics_key: str = ""
    """Empty: /metrics is open to anyone who can reach the port; set: `Authorization: Bearer <this>` needed"""
    webhook_timeout_seconds: float = Field(default=10.0, validation_alias=_env("WEBHOOK_TIMEOUT"))
    """Time per webhook attempt"""
    webhook_backoff_seconds: float = Field(default=5.0, validation_alias=_env("WEBHOOK_BACKOFF"))
    """First retry delay of a webhook (doubling, with jitter)"""
    webhook_backoff_max_seconds: float = Field(default=3600.0, validation_alias=_env("WEBHOOK_BACKOFF_MAX"))
    """Longest retry delay of a webhook"""
    webhook_retry_seconds: float = 86400.0
    """How long a webhook delivery is retried"""
    webhook_allow_networks: CommaList = []
    """Networks a webhook may reach besides public addresses (CIDRs, e.g. 127.0.0.0/8 in tests)"""

    executor: Literal["local", "ray"] = "local"
    """What runs the trainers: `local` process groups on this machine, or `ray`: Ray Jobs on the cluster at
    `ray_address` (docs/deployment.md)"""
    ray_address: str = ""
    """The Ray head's job-submission address (its dashboard port, e.g. `http://127.0.0.1:8265`); needed with
    `executor=ray`. The port has no authentication: keep it private"""
    ray_data_dir: Path | None = None
    """Where Ray workers see this service's `data_dir` (the same shared storage); empty: at the same path"""
    ray_python: str = ""
    """The Python that runs the trainer on Ray workers (with the `train` extra); empty: the service's own"""
    ray_num_cpus: Annotated[float, Field(gt=0)] = 1.0
    """CPUs each job reserves on the Ray cluster (its trainer's threads on a cluster without GPUs)"""
    executor_lost_seconds: Annotated[float, Field(gt=0)] = 15.0
    """How long an unreachable Ray head is waited for before its running jobs fail with `executor_lost`"""

    max_runtime_seconds: Annotated[int, Field(ge=1)] | None = None
    """The `max_runtime_seconds` of a job created without one (empty: no limit)"""
    fair_share_window_hours: Annotated[float, Field(gt=0)] = 24.0
    """Among queued jobs of equal priority, the API key with the least GPU time over this many past hours
    goes first"""
    quota_window_days: Annotated[float, Field(gt=0)] = 30.0
    """A key's `max_gpu_hours` counts its GPU time over this many past days"""
    mlflow_tracking_uri: str = ""
    """The MLflow server of an `mlflow` integration that names none; empty: a file store in the job's
    folder"""
    inference_engine: Literal["transformers", "vllm"] = "transformers"
    """What serves /v1/chat/completions: transformers + peft (embedded, any device), or vLLM where it is
    installed (a GPU; LoRA adapters loaded at run time)"""
    inference_max_adapters: Annotated[int, Field(ge=1, le=256)] = 8
    """Fine-tune adapters kept loaded per base model (the least recently used one makes room)"""
    inference_idle_seconds: Annotated[float, Field(gt=0)] = 600.0
    """A model unused this long is unloaded; the inference worker exits when nothing is loaded"""
    inference_gpu: Literal["lease", "share"] = "lease"
    """With GPUs: `lease` gives the inference worker a GPU of its own while it runs (a job waits for it like
    for another job's), `share` runs it on the first GPU beside training (where memory allows)"""
    inference_qlora_base: Literal["4bit", "full"] = "4bit"
    """A QLoRA fine-tune is served on the 4-bit base it was trained on, or on the unquantized base"""
    inference_max_waiting: Annotated[int, Field(ge=1)] = 64
    """Generation requests waiting for the engine at once (per service process); beyond: 503 with
    Retry-After"""

    @field_validator("api_keys", "gpus", "webhook_allow_networks", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="after")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("data_dir", "files_root", "models_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @field_validator("ray_data_dir", mode="after")
    @classmethod
    def _absolute_or_none(cls, value: Path | None) -> Path | None:
        return None if value is None else value.absolute()

    @model_validator(mode="after")
    def _ray_needs_an_address(self) -> Settings:
        if self.executor == "ray" and not self.ray_address:
            raise ValueError(f"{PREFIX}EXECUTOR=ray needs {PREFIX}RAY_ADDRESS (e.g. http://127.0.0.1:8265)")
        return self

    @property
    def db_path(self) -> Path:
        return self.data_dir / "tuning.db"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def metrics_dir(self) -> Path:
        return self.data_dir / "metrics"

    @property
    def inference_dir(self) -> Path:
        return self.data_dir / "inference"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "tuning_service.log"

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return PREFIX + field.upper()


def describe_error(exc: Exception) -> str:
    """A settings error as one line naming the variable (for the command line)."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    err = exc.errors(include_url=False)[0]
    if not err["loc"]:  # a rule between settings (a model validator): its message names them
        return str(err["msg"]).removeprefix("Value error, ")
    field = str(err["loc"][0])
    name = env_name(field) if field in Settings.model_fields else field
    return f"{name} must be {_expected(err)}, got {os.environ.get(name, err.get('input'))!r}"


def _expected(err: Any) -> str:
    kind = str(err["type"])
    if kind.startswith("int"):
        return "an integer"
    if kind.startswith("float"):
        return "a number"
    return str(err["msg"]).lower()

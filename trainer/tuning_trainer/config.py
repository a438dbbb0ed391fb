"""The one job schema shared by the trainer's flags, its JSON config and the service.

Standard library only: the service imports this module to validate a job in milliseconds, so nothing here may
import torch, transformers or any other part of the ML stack.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

METHODS = ("qlora", "lora")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial", "cosine_with_restarts")
AUTO: Final = "auto"


class ConfigError(ValueError):
    """A job configuration that cannot run. `param` names the offending field (dotted path)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_config") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass
class Hyperparameters:
    """Training hyperparameters. The seed's names (`epochs`, `learning_rate`, `batch_size`) come first."""

    epochs: int | Literal["auto"] = AUTO
    learning_rate: float = 2e-4
    batch_size: int | Literal["auto"] = AUTO
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_length: int = 1024
    # Stop after this many optimizer steps (None: run all epochs). Handy for smoke runs.
    max_steps: int | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # "all-linear" targets every linear layer except the output head (peft's own shorthand).
    lora_target_modules: str | list[str] = "all-linear"
    train_on_inputs: bool = False
    # Evaluate every N optimizer steps (None: once per epoch when a validation file is given).
    eval_steps: int | None = None
    # Checkpoint every N optimizer steps (None: only on SIGTERM/interrupt and at the end).
    save_steps: int | None = None
    logging_steps: int = 1
    gradient_checkpointing: bool | None = None  # None: on for qlora, off for lora
    packing: bool = False


@dataclass
class JobConfig:
    model: str
    training_file: str
    output_dir: str
    validation_file: str | None = None
    method: Literal["qlora", "lora"] = "qlora"
    seed: int = 42
    resume_from: str | None = None
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)

    # ---- (de)serialisation -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobConfig:
        """Build and validate a config. Raises ConfigError naming the field on any problem."""
        if not isinstance(data, Mapping):
            raise ConfigError("config must be a JSON object", param=None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown field {unknown[0]!r}", param=unknown[0], code="unknown_field")
        for required in ("model", "training_file", "output_dir"):
            if data.get(required) in (None, ""):
                raise ConfigError(f"{required!r} is required", param=required, code="missing_field")
        hp = parse_hyperparameters(data.get("hyperparameters") or {})
        cfg = cls(
            model=_str(data, "model"),
            training_file=_str(data, "training_file"),
            output_dir=_str(data, "output_dir"),
            validation_file=_opt_str(data, "validation_file"),
            method=data.get("method") or "qlora",
            seed=_int(data.get("seed", 42), "seed", minimum=0),
            resume_from=_opt_str(data, "resume_from"),
            hyperparameters=hp,
        )
        if cfg.method not in METHODS:
            raise ConfigError(
                f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}", param="method"
            )
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> JobConfig:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}", param="config", code="not_found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file is not valid JSON: {exc}", param="config") from None
        return cls.from_dict(raw)


# ---- validation helpers ----------------------------------------------------------------------------------


def parse_hyperparameters(data: Mapping[str, Any]) -> Hyperparameters:
    """Validate a hyperparameters mapping; unknown names and out-of-range values raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError("hyperparameters must be an object", param="hyperparameters")
    known = {f.name for f in dataclasses.fields(Hyperparameters)}
    for name in data:
        if name not in known:
            raise ConfigError(
                f"unknown hyperparameter {name!r}", param=f"hyperparameters.{name}", code="unknown_field"
            )
    d = dict(data)
    p = "hyperparameters."

    def get(name: str) -> Any:
        return d.get(name, getattr(Hyperparameters, name, None))

    hp = Hyperparameters()
    hp.epochs = _int_or_auto(get("epochs"), p + "epochs", minimum=1, maximum=1000)
    hp.batch_size = _int_or_auto(get("batch_size"), p + "batch_size", minimum=1, maximum=4096)
    hp.learning_rate = _float(get("learning_rate"), p + "learning_rate", low=0.0, high=1.0, low_open=True)
    hp.gradient_accumulation_steps = _int(
        get("gradient_accumulation_steps"), p + "gradient_accumulation_steps", minimum=1, maximum=4096
    )
    hp.warmup_ratio = _float(get("warmup_ratio"), p + "warmup_ratio", low=0.0, high=1.0)
    sched = get("lr_scheduler_type")
    if sched not in SCHEDULERS:
        raise ConfigError(
            f"lr_scheduler_type must be one of {', '.join(SCHEDULERS)}, got {sched!r}",
            param=p + "lr_scheduler_type",
        )
    hp.lr_scheduler_type = sched
    hp.weight_decay = _float(get("weight_decay"), p + "weight_decay", low=0.0, high=10.0)
    hp.max_grad_norm = _float(get("max_grad_norm"), p + "max_grad_norm", low=0.0, high=1e6)
    hp.max_seq_length = _int(get("max_seq_length"), p + "max_seq_length", minimum=8, maximum=1_048_576)
    hp.max_steps = _opt_int(get("max_steps"), p + "max_steps", minimum=1)
    hp.lora_r = _int(get("lora_r"), p + "lora_r", minimum=1, maximum=4096)
    hp.lora_alpha = _int(get("lora_alpha"), p + "lora_alpha", minimum=1, maximum=65536)
    hp.lora_dropout = _float(get("lora_dropout"), p + "lora_dropout", low=0.0, high=1.0, high_open=True)
    targets = get("lora_target_modules")
    if isinstance(targets, str):
        if not targets:
            raise ConfigError("lora_target_modules must not be empty", param=p + "lora_target_modules")
    elif isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets):
        targets = list(targets)
    else:
        raise ConfigError(
            'lora_target_modules must be "all-linear" or a non-empty list of module names',
            param=p + "lora_target_modules",
        )
    hp.lora_target_modules = targets
    hp.train_on_inputs = _bool(get("train_on_inputs"), p + "train_on_inputs")
    hp.eval_steps = _opt_int(get("eval_steps"), p + "eval_steps", minimum=1)
    hp.save_steps = _opt_int(get("save_steps"), p + "save_steps", minimum=1)
    hp.logging_steps = _int(get("logging_steps"), p + "logging_steps", minimum=1)
    gc = get("gradient_checkpointing")
    hp.gradient_checkpointing = None if gc is None else _bool(gc, p + "gradient_checkpointing")
    hp.packing = _bool(get("packing"), p + "packing")
    return hp


def resolve_auto(hp: Hyperparameters, num_examples: int) -> dict[str, Any]:
    """Resolve "auto" epochs and batch size from the number of training examples.

    The documented rule (docs/trainer-protocol.md):
      - epochs = clamp(ceil(1500 / num_examples), 1, 5): small sets get more passes, large sets one to a few;
      - batch_size = largest power of two <= 2% of the examples, clamped to [1, 8].
    Returns what was resolved, e.g. {"epochs": 5, "batch_size": 4}, and updates `hp` in place.
    """
    n = max(1, num_examples)
    resolved: dict[str, Any] = {}
    if hp.epochs == AUTO:
        hp.epochs = max(1, min(5, math.ceil(1500 / n)))
        resolved["epochs"] = hp.epochs
    if hp.batch_size == AUTO:
        target = max(1, min(8, int(n * 0.02)))
        hp.batch_size = 1 << (target.bit_length() - 1)
        resolved["batch_size"] = hp.batch_size
    return resolved


def _str(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string", param=name)
    if "\x00" in value:
        raise ConfigError(f"{name} must not contain NUL bytes", param=name)
    return value


def _opt_str(data: Mapping[str, Any], name: str) -> str | None:
    return None if data.get(name) in (None, "") else _str(data, name)


def _int(value: Any, param: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{param.split('.')[-1]} must be an integer, got {value!r}", param=param)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{param.split('.')[-1]} must be >= {minimum}, got {value}", param=param)
    if maximum is not None and value > maximum:
        raise ConfigError(f"{param.split('.')[-1]} must be <= {maximum}, got {value}", param=param)
    return value


def _opt_int(value: Any, param: str, *, minimum: int | None = None) -> int | None:
    return None if value is None else _int(value, param, minimum=minimum)


def _int_or_auto(value: Any, param: str, *, minimum: int, maximum: int) -> Any:
    if value == AUTO:
        return AUTO
    return _int(value, param, minimum=minimum, maximum=maximum)


def _float(
    value: Any,
    param: str,
    *,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    name = param.split(".")[-1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}", param=param)
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}", param=param)
    if value < low or (low_open and value == low) or value > high or (high_open and value == high):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{name} must be in {lo}{low}, {high}{hi}, got {value}", param=param)
    return value


def _bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{param.split('.')[-1]} must be true or false, got {value!r}", param=param)
    return value

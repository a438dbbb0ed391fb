"""Command-line flags for the trainer: the same schema as the JSON config (config.py), standard library only.

Every field of JobConfig and Hyperparameters has a flag (`learning_rate` -> `--learning-rate`);
`--config FILE` supplies a JSON job and flags given alongside it win; `--hp name=value` sets any
hyperparameter by its name.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .config import ADAPTERS, METHODS, ConfigError, Hyperparameters, JobConfig

_TOP_LEVEL = (
    "model", "training_file", "validation_file", "output_dir", "method", "adapter", "seed", "resume_from",
    "init_adapter",
)  # fmt: skip
# The hyperparameters that are flags (--packing / --no-packing): those of type bool (or bool | None).
_BOOL_FIELDS = frozenset(
    name for name, f in Hyperparameters.model_fields.items() if f.annotation in (bool, bool | None)
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="accelerate launch [accelerate flags] -m tuning_trainer",
        description="LoRA/QLoRA fine-tuning of a causal language model on a JSONL file "
        "(docs/trainer.md, docs/trainer-protocol.md).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="a JSON job file (JobConfig); flags given as well override it")
    p.add_argument("--model", help="local directory, a name under $TUNING_MODELS_DIR (./models), or a hub id")
    p.add_argument("--training-file", dest="training_file", help="JSONL training data")
    p.add_argument("--validation-file", dest="validation_file", help="JSONL validation data (optional)")
    p.add_argument("--output-dir", dest="output_dir", help="events.jsonl, checkpoints, adapter")
    p.add_argument(
        "--method",
        choices=(*METHODS, *ADAPTERS),
        help="sft (default), or a preference objective: dpo, orpo, simpo (qlora/lora: sft with that adapter)",
    )
    p.add_argument("--adapter", choices=ADAPTERS, help="qlora (4-bit base, default) or lora")
    p.add_argument(
        "--init-adapter", dest="init_adapter", help="an adapter folder to start from (fresh optimizer)"
    )
    p.add_argument("--seed", type=int, help="random seed (default 42)")
    p.add_argument("--resume-from", dest="resume_from", help="a checkpoints/checkpoint-N directory")
    hp = p.add_argument_group("hyperparameters (defaults in docs/trainer.md)")
    for name, f in Hyperparameters.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name in _BOOL_FIELDS:
            hp.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=f.description)
        elif name == "lora_target_modules":
            hp.add_argument(flag, dest=name, help='"all-linear" or a comma-separated list of module names')
        else:
            hp.add_argument(flag, dest=name, metavar=name.upper(), help=f.description)
    p.add_argument(
        "--hp",
        action="append",
        metavar="NAME=VALUE",
        help="set a hyperparameter by name (repeatable); VALUE is parsed as JSON when it can be",
    )
    return p


def _value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(argv: list[str] | None = None) -> tuple[JobConfig, dict[str, Any]]:
    """Return the validated config and the raw mapping it was built from. Raises ConfigError."""
    parser = build_parser()
    try:
        ns = vars(parser.parse_args(argv))
    except SystemExit as exc:  # argparse already printed its message
        if exc.code in (0, None):
            raise
        raise ConfigError("invalid command-line arguments (see the usage above)", param="argv") from None
    raw: dict[str, Any] = {}
    if "config" in ns:
        path = ns.pop("config")
        try:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}", param="config", code="not_found") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file is not valid JSON: {exc}", param="config") from None
        if not isinstance(raw, dict):
            raise ConfigError("config file must hold a JSON object", param="config")
    hp = dict(raw.get("hyperparameters") or {})
    for name in _TOP_LEVEL:
        if name in ns:
            raw[name] = ns.pop(name)
    for item in ns.pop("hp", None) or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--hp expects NAME=VALUE, got {item!r}", param="hp")
        hp[name.strip()] = _value(value)
    for name, value in ns.items():
        if name == "lora_target_modules" and isinstance(value, str) and value != "all-linear":
            hp[name] = [part.strip() for part in value.split(",") if part.strip()]
        elif name in _BOOL_FIELDS:
            hp[name] = value
        else:
            hp[name] = _value(value)
    if hp:
        raw["hyperparameters"] = hp
    return JobConfig.from_dict(raw), raw

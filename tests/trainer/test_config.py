"""The job schema (config.py) and its command-line form (cli.py): one schema, two spellings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tuning_trainer.cli import parse_args
from tuning_trainer.config import ConfigError, Hyperparameters, JobConfig, resolve_auto

BASE = ["--model", "m", "--training-file", "t.jsonl", "--output-dir", "o"]


def test_flags_and_json_config_build_the_same_job(tmp_path: Path) -> None:
    job = {
        "model": "m",
        "training_file": "t.jsonl",
        "output_dir": "o",
        "method": "lora",
        "hyperparameters": {
            "epochs": 3,
            "learning_rate": 0.001,
            "batch_size": "auto",
            "lora_r": 8,
            "lora_target_modules": ["q_proj", "v_proj"],
            "train_on_inputs": True,
        },
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    from_file, _ = parse_args(["--config", str(path)])
    from_flags, _ = parse_args(
        [
            *BASE,
            "--method",
            "lora",
            "--epochs",
            "3",
            "--learning-rate",
            "1e-3",
            "--batch-size",
            "auto",
            "--lora-r",
            "8",
            "--lora-target-modules",
            "q_proj,v_proj",
            "--train-on-inputs",
        ]
    )
    assert from_file == from_flags == JobConfig.from_dict(job)


def test_flags_override_the_config_file_and_hp_sets_any_hyperparameter(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(
        json.dumps(
            {
                "model": "m",
                "training_file": "t",
                "output_dir": "o",
                "hyperparameters": {"epochs": 2, "lora_r": 4},
            }
        )
    )
    cfg, _ = parse_args(
        ["--config", str(path), "--epochs", "5", "--hp", "max_steps=7", "--hp", "packing=true"]
    )
    hp = cfg.hyperparameters
    assert (hp.epochs, hp.lora_r, hp.max_steps, hp.packing) == (5, 4, 7, True)


def test_defaults_are_explicit() -> None:
    cfg, _ = parse_args(BASE)
    assert (cfg.method, cfg.adapter) == ("sft", "qlora")
    assert cfg.hyperparameters == Hyperparameters()
    assert cfg.hyperparameters.lora_target_modules == "all-linear"
    assert (cfg.hyperparameters.epochs, cfg.hyperparameters.batch_size) == ("auto", "auto")


@pytest.mark.parametrize(
    ("argv", "param"),
    [
        (["--learning-rate", "0"], "hyperparameters.learning_rate"),
        (["--epochs", "zero"], "hyperparameters.epochs"),
        (["--batch-size", "-1"], "hyperparameters.batch_size"),
        (["--lr-scheduler-type", "exotic"], "hyperparameters.lr_scheduler_type"),
        (["--hp", "nonsense=1"], "hyperparameters.nonsense"),
        (["--hp", "no-equals-sign"], "hp"),
        (["--lora-dropout", "1"], "hyperparameters.lora_dropout"),
    ],
)
def test_bad_values_name_the_field(argv: list[str], param: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, *argv])
    assert info.value.param == param


def test_missing_required_field_and_bad_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args(["--model", "m", "--output-dir", "o"])
    assert (info.value.param, info.value.code) == ("training_file", "missing_field")
    with pytest.raises(ConfigError) as info:
        parse_args(["--config", str(tmp_path / "missing.json")])
    assert info.value.code == "not_found"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError) as info:
        parse_args(["--config", str(tmp_path / "bad.json")])
    assert info.value.param == "config"


def test_unknown_flag_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError):
        parse_args([*BASE, "--no-such-flag"])
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("n", "epochs", "batch_size"), [(1, 5, 1), (100, 5, 2), (300, 5, 4), (1000, 2, 8), (100_000, 1, 8)]
)
def test_auto_rule(n: int, epochs: int, batch_size: int) -> None:
    hp, resolved = resolve_auto(Hyperparameters(), n)
    assert resolved == {"epochs": epochs, "batch_size": batch_size}
    assert (hp.epochs, hp.batch_size) == (epochs, batch_size)
    fixed = Hyperparameters(epochs=2, batch_size=16)
    assert resolve_auto(fixed, n) == (fixed, {})


def test_schema_modules_import_without_the_ml_stack() -> None:
    import subprocess

    code = (
        "import sys, tuning_trainer.config, tuning_trainer.cli, tuning_trainer.data, tuning_trainer.errors, "
        "tuning_trainer.events, tuning_trainer.modelling, tuning_trainer.checkpoint, tuning_trainer.signals;"
        "names = ('torch', 'transformers', 'peft', 'accelerate', 'bitsandbytes');"
        "heavy = [m for m in names if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

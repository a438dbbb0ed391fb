"""A fake trainer for the dashboard's preference tests: it writes the records of a short run
(docs/trainer-protocol.md) in a fraction of a second, without any ML, so that a page has a finished job's
history to draw.

Run as `python fake_trainer.py --config JOB.json` (the service's TUNING_TRAINER_COMMAND). From the config:
`hyperparameters.max_steps` steps (default 6), an `eval` record every `eval_steps` when there is a validation
file, a checkpoint every `save_steps` (each with adapter files, so that `from_checkpoint` can name it), the
final adapter at the end. A preference method (anything but sft) adds the rewards to its `metrics` and `eval`
records: the values are `rewards(step)` below, so a test knows what the page must show.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

SFT = "sft"


def rewards(step: int, prefix: str = "") -> dict[str, float]:
    """The rewards a preference run reports at `step` (eval ones with prefix "eval_")."""
    chosen = round(0.1 * step, 6)
    rejected = round(-0.05 * step, 6)
    return {
        f"{prefix}rewards_chosen": chosen,
        f"{prefix}rewards_rejected": rejected,
        f"{prefix}rewards_margin": round(chosen - rejected, 6),
        f"{prefix}rewards_accuracy": min(1.0, 0.5 + step / 16),
    }


def write_adapter(folder: Path, hp: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "r": hp.get("lora_r", 16),
        "lora_alpha": hp.get("lora_alpha", 32),
        "lora_dropout": hp.get("lora_dropout", 0.0),
        "target_modules": hp.get("lora_target_modules", "all-linear"),
    }
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(b"not really weights")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    cfg = json.loads(Path(ap.parse_args().config).read_text(encoding="utf-8"))
    out = Path(cfg["output_dir"])
    hp = cfg.get("hyperparameters") or {}
    steps = int(hp.get("max_steps") or 6)
    eval_steps = int(hp.get("eval_steps") or steps) if cfg.get("validation_file") else 0
    save_steps = int(hp.get("save_steps") or 0)
    preference = cfg.get("method", SFT) != SFT
    events = open(out / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def emit(type_: str, **fields: object) -> None:
        events.write(json.dumps({"type": type_, "time": time.time(), **fields}) + "\n")
        events.flush()

    print(f"fake trainer: {cfg.get('method')} on {cfg.get('adapter')}", flush=True)
    if cfg.get("init_adapter"):
        print(f"starting from {Path(cfg['init_adapter']).name}", flush=True)
    emit(
        "started",
        total_steps=steps,
        total_epochs=1,
        num_examples=8,
        start_step=0,
        device="cpu",
        config={**cfg, "hyperparameters": {**hp, "epochs": 1, "batch_size": 2}},
        resolved_auto={"epochs": 1, "batch_size": 2},
    )
    for step in range(1, steps + 1):
        time.sleep(0.01)
        emit(
            "metrics",
            step=step,
            total_steps=steps,
            epoch=step / steps,
            loss=2.0 / step,
            token_accuracy=0.5,
            learning_rate=1e-4,
            tokens_per_second=1000.0,
            tokens_seen=step * 10,
            eta_seconds=(steps - step) * 0.01,
            **(rewards(step) if preference else {}),
        )
        if eval_steps and step % eval_steps == 0:
            emit(
                "eval",
                step=step,
                epoch=step / steps,
                eval_loss=2.5 / step,
                eval_token_accuracy=0.4,
                **(rewards(step, "eval_") if preference else {}),
            )
        if save_steps and step % save_steps == 0:
            ckpt = out / "checkpoints" / f"checkpoint-{step}"
            write_adapter(ckpt, hp)
            (ckpt / "trainer_state.pt").write_text("{}", encoding="utf-8")
            emit("checkpoint", step=step, path=str(ckpt))
    write_adapter(out / "adapter", hp)
    emit(
        "completed",
        adapter_path=str(out / "adapter"),
        final_loss=2.0 / steps,
        total_steps=steps,
        tokens_seen=steps * 10,
    )
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

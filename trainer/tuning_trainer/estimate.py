"""The dry run: what a job would do, from the trainer's own planning, without loading a weight.

    python -m tuning_trainer.estimate < request.json

stdin: `{"config": <config.json, as the supervisor writes it>, "num_processes": N}`. The process sees the
devices the job would see (CUDA_VISIBLE_DEVICES, set by the service), tokenises the data with the model's
own tokenizer and runs `runplan.plan_run`, the same code as the recipe's `setup`: every number it prints is
the one the real job's `started` record will report.

stdout: one JSON line, `{"estimate": {...}}`, or `{"error": <a failed record's fields>}` (exit 2), so the
service can answer a bad request as create would (it never imports this stack itself).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import Any

from .config import ConfigError, JobConfig
from .data import summarise_job_files
from .errors import EXIT_OK, EXIT_USER_ERROR, INVALID_CONFIG, TrainerError, classify
from .memory import fits
from .records import Estimate, EstimateMemory
from .runplan import Device, RunPlan, plan_run


def _device() -> Device:
    """The device the job's first process would train on."""
    import torch  # as the trainer would: any GPU this process is shown (CUDA_VISIBLE_DEVICES)

    if torch.cuda.is_available():
        from .runplan import device_of

        return device_of(torch, torch.device("cuda", 0))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Device(kind="cpu", memory_bytes=ram, dtype_bytes=4)


def describe(run: RunPlan, device: Device, world: int) -> dict[str, Any]:
    """The estimate (records.Estimate): the fields it shares with the `started` record come from the same
    plan as the real run's."""
    mem = run.memory

    def mb(n: int) -> int:
        return round(n / 2**20)

    return Estimate(
        num_examples=run.num_examples,
        num_eval_examples=run.num_eval_examples,
        num_tokens=run.train_stats["num_tokens"],
        trainable_tokens=run.trainable_tokens,
        truncated_examples=run.train_stats["truncated_examples"],
        dropped_examples=run.train_stats["dropped_examples"],
        resolved_auto=run.resolved_auto,
        total_steps=run.total_steps,
        total_epochs=run.total_epochs,
        steps_per_epoch=run.steps_per_epoch,
        padding_efficiency=run.efficiency.padding_efficiency,
        micro_batch_tokens=run.efficiency.micro_batch_tokens,
        attn_implementation=run.attn_implementation,  # type: ignore[arg-type]
        device=device.label,
        num_processes=world,
        gradient_checkpointing=run.gradient_checkpointing,
        tokens_to_process=run.tokens_to_process,
        hyperparameters=run.hp,
        shape=asdict(run.shape),
        memory=EstimateMemory(
            peak_mb=mb(mem.peak_bytes),
            device_mb=mb(device.memory_bytes),
            fits=fits(mem, device.memory_bytes),
            breakdown_mb={
                k.removesuffix("_bytes"): mb(v) for k, v in mem.to_dict().items() if k != "peak_bytes"
            },
        ),
    ).model_dump()


def estimate(request: dict[str, Any]) -> dict[str, Any]:
    from .modelling import resolve_model

    try:
        cfg = JobConfig.from_dict(request["config"])
    except ConfigError as exc:
        raise TrainerError(INVALID_CONFIG, exc.message, EXIT_USER_ERROR, extra={"param": exc.param}) from None
    world = int(request.get("num_processes", 1))
    train_summary, eval_summary = summarise_job_files(cfg)
    source = resolve_model(cfg.model)  # a bad file or model fails here, before the ML stack is imported
    from transformers import AutoConfig

    from .dataset import ensure_chat_template
    from .modelling import load_tokenizer

    tokenizer = load_tokenizer(source.location)
    ensure_chat_template(tokenizer)
    device = _device()
    run = plan_run(
        cfg,
        tokenizer,
        train_summary,
        eval_summary,
        world=world,
        device=device,
        model_config=AutoConfig.from_pretrained(source.location).to_dict(),
    )
    return describe(run, device, world)


def main() -> int:
    from .__main__ import _quiet_environment

    _quiet_environment()
    try:
        out: dict[str, Any] = {"estimate": estimate(json.load(sys.stdin))}
        code = EXIT_OK
    except BaseException as exc:  # every failure is one JSON answer
        if isinstance(exc, KeyboardInterrupt):
            raise
        err = classify(exc)
        out, code = {"error": err.record()}, err.exit_code
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())

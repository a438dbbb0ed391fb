#!/usr/bin/env python3
"""The baselines of scripts/bench/trainer.py: the same job through a plain HF `Trainer` + peft, fed exactly
our trainer's micro-batches in our trainer's order.

    python scripts/bench/hf_baseline.py plan JOB.json PLAN.json    # our trainer's micro-batches, described
    accelerate launch [flags] scripts/bench/hf_baseline.py run SETTINGS.json

`plan` runs the trainer's own planning (tuning_trainer.runplan.plan_run: tokenisation, "auto" resolved, the
micro-batches of every epoch in the seed's order, the attention kernel, gradient checkpointing) and writes
each optimizer step's examples and token counts: input tokens, trained tokens (positions with a target) and
the token positions ("slots", padding included) of our layout, of a padded batch and of a flattened one.

`run` plans the same way (and checks that the plan equals PLAN.json), loads the model as the trainer does
(same dtype, 4-bit NF4 + double quant for qlora, same attention kernel, gradient checkpointing as the plan
decided, no fp32 upcast) and wraps it with peft's `get_peft_model` with the same LoRA settings. A HF `Trainer`
(per_device_train_batch_size=1, gradient_accumulation_steps=1, a sequential sampler, the same learning rate,
schedule, warm-up steps, clipping, seed and default fused AdamW) then trains on a dataset whose items are our
micro-batches, collated by `DataCollatorForSeq2Seq` (padding: the plain baseline) or
`DataCollatorWithFlattening` (padding-free: one row, position ids restart per example). The loss is HF's:
the mean over the trained tokens of the step (`num_items_in_batch`), as ours. It writes per-step end times,
losses, token counts and its peak memory (CUDA: max allocated; CPU: peak RSS) to the settings' `result`.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

START = time.time()
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("BITSANDBYTES_NOWELCOME", "1")
IGNORE_INDEX = -100


def _device(torch: Any) -> Any:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def plan_job(job: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """(the trainer's RunPlan, the tokenizer, a JSON description of every optimizer step) for a job, planned
    exactly as the trainer plans it on this machine (one process)."""
    import torch
    from transformers import AutoConfig

    from tuning_trainer.batching import lay_out
    from tuning_trainer.config import JobConfig
    from tuning_trainer.data import summarise_job_files
    from tuning_trainer.dataset import ensure_chat_template
    from tuning_trainer.modelling import load_tokenizer
    from tuning_trainer.runplan import device_of, plan_run

    cfg = JobConfig.from_dict(job)
    if cfg.hyperparameters.gradient_accumulation_steps != 1:
        raise SystemExit(
            "the benchmark compares single micro-batch steps: gradient_accumulation_steps must be 1"
        )
    train_summary, _ = summarise_job_files(cfg)
    tokenizer = load_tokenizer(cfg.model)
    ensure_chat_template(tokenizer)
    model_config = AutoConfig.from_pretrained(cfg.model).to_dict()
    run = plan_run(
        cfg,
        tokenizer,
        train_summary,
        None,
        world=1,
        device=device_of(torch, _device(torch)),
        model_config=model_config,
    )
    batches: list[list[int]] = []
    for epoch in range(run.total_epochs):
        batches += run.plan.epoch(epoch, run.cfg.seed)[0]
    batches = batches[: run.total_steps]
    steps = []
    for indices in batches:
        examples = [run.examples[i] for i in indices]
        lengths = [len(ex["input_ids"]) for ex in examples]
        ours = lay_out(examples, run.layout, tokenizer.pad_token_id)
        steps.append(
            {
                "indices": indices,
                "lengths": lengths,
                "tokens": sum(lengths),
                "trained": ours.trained,
                "slots": {"ours": ours.slots, "pad": len(lengths) * max(lengths), "flat": sum(lengths)},
            }
        )
    hp = run.hp
    desc = {
        "total_steps": run.total_steps,
        "num_examples": len(run.examples),
        "attn_implementation": run.attn_implementation,
        "layout": run.layout,
        "gradient_checkpointing": run.gradient_checkpointing,
        "padding_efficiency": run.efficiency.padding_efficiency,
        "estimated_peak_memory_mb": round(run.memory.peak_bytes / 2**20),
        "resolved": {
            "batch_size": hp.batch_size,
            "max_tokens_per_batch": hp.max_tokens_per_batch,
            "packing": hp.packing,
            "max_seq_length": hp.max_seq_length,
            "learning_rate": hp.learning_rate,
            "lr_scheduler_type": hp.lr_scheduler_type,
            "warmup_steps": _warmup_steps(hp.warmup_ratio, run.total_steps),
        },
        "model_config": {
            k: model_config.get(k)
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "vocab_size",
            )
        },
        "steps": steps,
    }
    return run, tokenizer, desc


def _warmup_steps(ratio: float, total: int) -> int:
    import math

    return math.ceil(ratio * total)  # as the trainer's recipe does


def cmd_plan(job_path: str, out_path: str) -> None:
    _, _, desc = plan_job(json.loads(Path(job_path).read_text()))
    Path(out_path).write_text(json.dumps(desc))


class _Collate:
    """One dataset item is one of our micro-batches (a list of examples): pad it (the plain baseline) or
    flatten it (padding-free), and count what it holds."""

    def __init__(self, inner: Any, counts: list[dict[str, Any]]) -> None:
        self.inner = inner
        self.counts = counts

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        (item,) = items
        batch = self.inner(
            [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in item["examples"]]
        )
        ids = batch["input_ids"]
        labels = batch["labels"]
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(ids.numel())
        self.counts.append(
            {
                "indices": item["indices"],
                "tokens": tokens,
                "slots": int(ids.numel()),
                "trained": int((labels[..., 1:] != IGNORE_INDEX).sum()),
            }
        )
        return dict(batch)


def cmd_run(settings_path: str) -> None:
    settings = json.loads(Path(settings_path).read_text())
    import torch
    from peft import get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )
    from transformers.utils import logging as hf_logging

    from tuning_trainer.modelling import lora_config, quantization_config

    hf_logging.set_verbosity_error()
    job = settings["job"]
    run, tokenizer, desc = plan_job(job)
    expected = json.loads(Path(settings["plan"]).read_text())
    if [s["indices"] for s in desc["steps"]] != [s["indices"] for s in expected["steps"]]:
        raise SystemExit("this process planned other micro-batches than the benchmark's plan")
    cfg, hp = run.cfg, run.hp
    device = _device(torch)
    cuda = device.type == "cuda"
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32

    set_seed(cfg.seed)  # as the trainer: the same RNG state reaches get_peft_model (the same LoRA init)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": run.attn_implementation,
        "device_map": {"": 0} if cuda else {"": "cpu"},
    }
    if cfg.adapter == "qlora":  # the same 4-bit base as ours
        kwargs["quantization_config"] = quantization_config(dtype, device)
    model: Any = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    for p in model.parameters():
        p.requires_grad_(False)
    if run.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    model = get_peft_model(model, lora_config(hp))

    items = [
        {"indices": s["indices"], "examples": [run.examples[i] for i in s["indices"]]} for s in desc["steps"]
    ]
    counts: list[dict[str, Any]] = []
    if settings["collator"] == "flatten":
        inner: Any = DataCollatorWithFlattening(return_position_ids=True)
    else:
        inner = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    step_times: list[float] = []
    train_begin: list[float] = []
    losses: list[Any] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            train_begin.append(time.time())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            step_times.append(time.time())

    class BenchTrainer(Trainer):
        def _get_train_sampler(self, *args: Any, **kw: Any) -> Any:
            return SequentialSampler(items)  # our order, not a shuffle

        def training_step(self, *args: Any, **kw: Any) -> Any:
            loss = super().training_step(*args, **kw)
            losses.append(loss)  # the step's mean loss over its trained tokens (read after training)
            return loss

    half = cuda and dtype == torch.bfloat16
    args = TrainingArguments(
        output_dir=settings["output_dir"],
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler_type,
        warmup_steps=desc["resolved"]["warmup_steps"],
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        max_steps=run.total_steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=half,
        fp16=cuda and not half,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=cfg.seed,
    )
    trainer = BenchTrainer(
        model=model,
        args=args,
        train_dataset=items,  # type: ignore[arg-type]
        data_collator=_Collate(inner, counts),
        callbacks=[Timer()],
    )
    trainer.train()
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    Path(settings["result"]).write_text(
        json.dumps(
            {
                "start": START,
                "train_begin": train_begin[0],
                "step_times": step_times,
                "losses": [float(x) for x in losses],
                "counts": counts,
                "peak_memory_mb": peak,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "attn_implementation": run.attn_implementation,
                "gradient_checkpointing": run.gradient_checkpointing,
                "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            }
        )
    )


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "plan" and len(sys.argv) == 4:
        cmd_plan(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "run":
        cmd_run(sys.argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The baseline for scripts/bench/trainer.py: the same job through a plain HF `Trainer` + peft.

Same tokens (tuning_trainer.dataset), same model loading rules (4-bit NF4 + double quant for qlora, gradient
checkpointing likewise), same LoRA settings, batch size, learning rate and number of steps. Prints one JSON
object (per-step wall-clock times, tokens per step, peak memory) on the last line of stdout.

    python scripts/bench/hf_baseline.py SETTINGS.json
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

START = time.time()
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    settings = json.loads(Path(sys.argv[1]).read_text())
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from tuning_trainer.config import JobConfig
    from tuning_trainer.data import validate_file
    from tuning_trainer.dataset import collate, ensure_chat_template, tokenize_file
    from tuning_trainer.modelling import ModelSource, load_model, load_tokenizer

    cfg = JobConfig.from_dict(settings["job"])
    hp = cfg.hyperparameters
    source = ModelSource("local", cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    ensure_chat_template(tokenizer)
    fmt = validate_file(cfg.training_file).format
    examples = tokenize_file(
        cfg.training_file,
        fmt,
        tokenizer,
        max_seq_length=hp.max_seq_length,
        train_on_inputs=hp.train_on_inputs,
    ).examples
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model, _ = load_model(cfg, source, device)  # peft-wrapped exactly as the trainer does

    tokens: list[int] = []

    def collator(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        batch = collate(rows, tokenizer.pad_token_id)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            step_times.append(time.time())

    bf16 = cuda and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=settings["output_dir"],
        per_device_train_batch_size=int(hp.batch_size),
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler_type,
        warmup_steps=math.ceil(hp.warmup_ratio * int(hp.max_steps or 10)),
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        max_steps=int(hp.max_steps or 10),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=bf16,
        fp16=cuda and not bf16,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=cfg.seed,
        gradient_checkpointing=False,  # already set up by load_model, as in the trainer
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=examples, data_collator=collator, callbacks=[Timer()]
    )
    trainer.train()
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    accumulate = hp.gradient_accumulation_steps
    per_step = [sum(tokens[i * accumulate : (i + 1) * accumulate]) for i in range(len(step_times))]
    print(
        json.dumps(
            {
                "start": START,
                "step_times": step_times,
                "step_tokens": per_step,
                "peak_memory_mb": peak / 2**20,
            }
        )
    )


if __name__ == "__main__":
    main()

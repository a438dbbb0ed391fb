"""What a run will do, before any weight is loaded: the tokenised examples, the resolved hyperparameters, the
micro-batches and step counts, the attention kernel and batch layout, gradient checkpointing and the memory
estimate. The recipe's `setup` runs it, and so does the dry run (estimate.py): one computation, so that an
estimate's numbers are the real run's own.

Needs a tokenizer (transformers) and the model's config, never torch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import memory
from .batching import Efficiency, Example, Layout, Plan, efficiency, lay_out, make_plan, trained_tokens
from .config import Hyperparameters, JobConfig, resolve_auto
from .data import NO_TRAINABLE_TOKENS, TOO_FEW_EXAMPLES, DatasetSummary
from .dataset import tokenize_file
from .errors import EXIT_USER_ERROR, INVALID_DATA, TrainerError
from .memory import MemoryEstimate, Shape


@dataclass(frozen=True)
class Device:
    """Where the run trains, as far as planning needs to know."""

    kind: str
    """"cuda" or "cpu" """
    memory_bytes: int
    """Per device (a GPU's memory; the machine's RAM on CPU)"""
    dtype_bytes: int
    """The compute dtype's size: 2 (bf16/fp16 on a GPU) or 4 (fp32 on CPU)"""
    has_flash_attn: bool = False
    label: str = "cpu"
    """As the `started` record's `device`: cpu, or e.g. cuda:0 (NVIDIA H100 80GB HBM3)"""


def device_of(torch: Any, device: Any) -> Device:
    """The planning view of a torch device (the caller imports torch: this module does not)."""
    import importlib.util

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        # The compute dtype there is bf16, or fp16 where bf16 is missing (modelling.compute_dtype): 2 bytes.
        total, label, dtype_bytes = props.total_memory, f"cuda:{device.index or 0} ({props.name})", 2
    else:
        total, label, dtype_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "cpu", 4
    return Device(
        kind="cuda" if device.type == "cuda" else "cpu",
        memory_bytes=total,
        dtype_bytes=dtype_bytes,
        has_flash_attn=importlib.util.find_spec("flash_attn") is not None,
        label=label,
    )


def choose_attn_implementation(requested: str, device: Device) -> str:
    """The attention kernel for "auto" (or a check of the one asked for): FlashAttention-2 on a GPU where
    flash-attn is installed (the compute dtype is then a half type), else PyTorch's sdpa."""
    fa2_ok = device.kind == "cuda" and device.has_flash_attn and device.dtype_bytes == 2
    if requested == "auto":
        return "flash_attention_2" if fa2_ok else "sdpa"
    if requested == "flash_attention_2" and not fa2_ok:
        raise TrainerError(
            "invalid_config",
            "attn_implementation flash_attention_2 needs a GPU, the flash-attn package and a bf16/fp16 "
            'compute dtype; use "auto" or "sdpa"',
            EXIT_USER_ERROR,
            extra={"param": "hyperparameters.attn_implementation"},
        )
    if requested == "flex_attention" and device.kind != "cuda":
        # Measured with torch 2.13: flex attention compiles, every new batch shape recompiles with dynamic
        # shapes, and the CPU code generator's C++ for that does not build. Training shapes always vary.
        raise TrainerError(
            "invalid_config",
            "attn_implementation flex_attention needs a GPU (on CPU, torch cannot compile it for varying "
            'batch shapes); use "auto" or "sdpa"',
            EXIT_USER_ERROR,
            extra={"param": "hyperparameters.attn_implementation"},
        )
    return requested


def layout_for(attn_implementation: str) -> Layout:
    """The batch layout (batching.py) each kernel is fastest with: one unpadded row for the kernels whose
    cost follows the examples' own lengths, rows of the longest example's width for those whose cost follows
    the row width squared."""
    return "varlen" if attn_implementation in ("flash_attention_2", "flex_attention") else "rows"


@dataclass(frozen=True)
class RunPlan:
    cfg: JobConfig
    """The job with "auto" resolved"""
    hp: Hyperparameters
    resolved_auto: dict[str, Any]
    examples: list[Example]
    eval_examples: list[Example]
    train_stats: dict[str, int]
    lengths: list[int]
    trained: list[int]
    """Trained tokens per example"""
    loss_units: list[int]
    """What each example adds to the count a step's loss is averaged over: its trained tokens (sft), or 1 for
    a pair's chosen sequence and 0 for its rejected one (a preference loss is a mean over pairs)"""
    eval_units: list[list[int]]
    """The validation examples in the groups that are scored together (pairs, for a preference method)"""
    eval_loss_units: int
    plan: Plan
    steps_per_epoch: int
    total_steps: int
    total_epochs: int
    attn_implementation: str
    layout: Layout
    efficiency: Efficiency
    gradient_checkpointing: bool
    memory: MemoryEstimate
    shape: Shape

    @property
    def num_examples(self) -> int:
        """Training examples: pairs, for a preference method (two sequences each)"""
        return self.train_stats["num_examples"]

    @property
    def num_eval_examples(self) -> int:
        return len(self.eval_units)

    @property
    def trainable_tokens(self) -> int:
        return sum(self.trained)

    @property
    def tokens_to_process(self) -> int:
        """Input tokens the whole run will process (every process, every step to total_steps)."""
        first = self.plan.epoch(0, self.cfg.seed)
        per_epoch = sum(self.lengths[i] for rank in first for batch in rank for i in batch)
        return round(per_epoch * self.total_steps / max(1, self.steps_per_epoch))


def plan_run(
    cfg: JobConfig,
    tokenizer: Any,
    train_summary: DatasetSummary,
    eval_summary: DatasetSummary | None,
    *,
    world: int,
    device: Device,
    model_config: dict[str, Any],
) -> RunPlan:
    hp = adapter_shape(cfg.hyperparameters, cfg.init_adapter)
    train = tokenize_file(
        cfg.training_file,
        train_summary.format,
        tokenizer,
        max_seq_length=hp.max_seq_length,
        train_on_inputs=hp.train_on_inputs,
    )
    if not train.examples:
        raise TrainerError(
            INVALID_DATA,
            f"no training example has a trainable token within max_seq_length={hp.max_seq_length}",
            EXIT_USER_ERROR,
            extra={"data_code": NO_TRAINABLE_TOKENS, "line": None, "file": "training_file"},
        )
    eval_examples: list[Example] = []
    if cfg.validation_file and eval_summary is not None:
        eval_examples = tokenize_file(
            cfg.validation_file,
            eval_summary.format,
            tokenizer,
            max_seq_length=hp.max_seq_length,
            train_on_inputs=hp.train_on_inputs,
        ).examples
    group = train.group
    hp, resolved = resolve_auto(hp, len(train.examples) // group, cfg.method)
    assert isinstance(hp.batch_size, int) and isinstance(hp.epochs, int)
    lengths = [len(ex["input_ids"]) for ex in train.examples]
    budget = hp.max_tokens_per_batch if isinstance(hp.max_tokens_per_batch, int) else 0
    plan = make_plan(
        lengths,
        packing=hp.packing,
        batch_size=hp.batch_size,
        max_tokens_per_batch=budget,
        world=world,
        group=group,
    )
    if plan.per_rank == 0:
        raise TrainerError(
            INVALID_DATA,
            f"{len(plan.units)} micro-batches cannot be shared by {world} processes",
            EXIT_USER_ERROR,
            extra={"data_code": TOO_FEW_EXAMPLES, "line": None, "file": "training_file"},
        )
    steps_per_epoch = math.ceil(plan.batches_per_epoch / hp.gradient_accumulation_steps)
    if hp.max_steps is not None:
        total_steps, total_epochs = hp.max_steps, math.ceil(hp.max_steps / steps_per_epoch)
    else:
        total_steps, total_epochs = steps_per_epoch * hp.epochs, hp.epochs
    attn = choose_attn_implementation(hp.attn_implementation, device)
    layout = layout_for(attn)
    shape = Shape.from_config(model_config)
    largest = _largest_batch(plan, train.examples, layout, cfg.seed)

    def estimate(gc: bool) -> MemoryEstimate:
        return memory.estimate_memory(
            shape,
            adapter_type=cfg.adapter,
            lora_r=hp.lora_r,
            lora_target_modules=hp.lora_target_modules,
            dtype_bytes=device.dtype_bytes,
            micro_batch_tokens=largest[0],
            rows=largest[1],
            width=largest[2],
            trained_tokens=largest[3],
            attn_implementation=attn,
            gradient_checkpointing=gc,
            on_gpu=device.kind == "cuda",
        )

    if hp.gradient_checkpointing == "auto":
        use_gc = memory.needs_checkpointing(estimate(False), device.memory_bytes)
    else:
        use_gc = bool(hp.gradient_checkpointing)
    return RunPlan(
        cfg=cfg.model_copy(update={"hyperparameters": hp}),
        hp=hp,
        resolved_auto=resolved,
        examples=train.examples,
        eval_examples=eval_examples,
        train_stats=train.stats(),
        lengths=lengths,
        trained=[trained_tokens(ex) for ex in train.examples],
        loss_units=_loss_units(train.examples, group),
        eval_units=[list(range(i, i + group)) for i in range(0, len(eval_examples), group)],
        eval_loss_units=sum(_loss_units(eval_examples, group)),
        plan=plan,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        total_epochs=total_epochs,
        attn_implementation=attn,
        layout=layout,
        efficiency=efficiency(plan, train.examples, layout, cfg.seed),
        gradient_checkpointing=use_gc,
        memory=estimate(use_gc),
        shape=shape,
    )


def adapter_shape(hp: Hyperparameters, init_adapter: str | None) -> Hyperparameters:
    """A run that starts from an adapter has that adapter's rank, alpha and dropout (peft loads it as it was
    saved), whatever the hyperparameters said: the memory estimate and the `started` config say so too."""
    if init_adapter is None:
        return hp
    try:
        saved = json.loads((Path(init_adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return hp  # loading the model says what is wrong with it
    names = (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout"))
    return hp.model_copy(update={ours: saved[theirs] for ours, theirs in names if theirs in saved})


def _loss_units(examples: list[Example], group: int) -> list[int]:
    if group == 1:
        return [trained_tokens(ex) for ex in examples]
    return [1 if i % group == 0 else 0 for i in range(len(examples))]


def _largest_batch(
    plan: Plan, examples: list[Example], layout: Layout, seed: int
) -> tuple[int, int, int, int]:
    """(positions, rows, width, trained tokens) of the first epoch's largest micro-batch: the one that sets
    the peak."""
    best = (0, 0, 0, 0)
    for rank_batches in plan.epoch(0, seed):
        for batch in rank_batches:
            laid = lay_out([examples[i] for i in batch], layout, 0)
            if laid.slots > best[0]:
                best = (laid.slots, len(laid.input_ids), len(laid.input_ids[0]), laid.trained)
    return best

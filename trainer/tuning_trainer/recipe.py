"""The training recipe: setup -> train -> cleanup, a plain accelerate loop (torchtune's shape).

Only the main process writes events, checkpoints and the adapter. Every other process trains its shard of
each batch and follows the main one's decisions (stop on a signal, stop at total_steps).
"""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from . import checkpoint
from .batching import Example, lay_out
from .config import JobConfig
from .data import DatasetSummary
from .dataset import ensure_chat_template
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USER_ERROR, TrainerError
from .events import EventWriter
from .modelling import ModelSource, load_model, load_tokenizer
from .runplan import device_of, plan_run
from .signals import StopFlag


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    from . import __version__

    out["tuning_trainer"] = __version__
    return out


def _default_mixed_precision(torch: Any) -> str | None:
    """On a GPU, autocast to bf16 (fp16 with loss scaling where bf16 is missing) unless the launcher chose.

    `accelerate launch` exports ACCELERATE_MIXED_PRECISION; "no" (its default) on a GPU would run the LoRA
    matmuls in fp32 next to a bf16 base, which is slower and no more useful, so a GPU run autocasts anyway.
    On CPU nothing changes: fp32 is both the fast and the exact choice there.
    """
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    chosen = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if on_cpu or chosen != "no" or not torch.cuda.is_available():
        return None
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _fused_adamw(torch: Any, device: Any) -> bool:
    """AdamW's fused kernel (one launch for every parameter) where this torch has it for the device."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return False
    return device.type in _get_fused_kernels_supported_devices()


class Recipe:
    def __init__(
        self,
        cfg: JobConfig,
        events: EventWriter,
        *,
        source: ModelSource,
        train_summary: DatasetSummary,
        eval_summary: DatasetSummary | None,
        stop: StopFlag,
    ) -> None:
        self.cfg = cfg
        self.hp = cfg.hyperparameters
        self.events = events
        self.source = source
        self.train_summary = train_summary
        self.eval_summary = eval_summary
        self.stop = stop
        self.output_dir = Path(cfg.output_dir)
        self.started_at = time.monotonic()

    # ---- setup -------------------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        self.torch = torch
        self.accelerator = acc = Accelerator(mixed_precision=_default_mixed_precision(torch))
        self.is_main = acc.is_main_process
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if launched != acc.num_processes:
            # e.g. `accelerate launch --multi_gpu` on a machine without GPUs: the processes start, but no
            # process group joins them, and each would train alone and write the same output folder.
            raise TrainerError(
                "invalid_config",
                f"launched as {launched} processes (WORLD_SIZE={launched}) but they formed no process group "
                f"(this one sees {acc.num_processes}); on a machine without GPUs launch with "
                "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N",
                EXIT_USER_ERROR,
                extra={"param": "num_processes"},
            )
        set_seed(self.cfg.seed)

        self.tokenizer = load_tokenizer(self.source.location)
        self.fallback_template = ensure_chat_template(self.tokenizer)
        self.world = acc.num_processes
        self.rank = acc.process_index
        device = acc.device
        from transformers import AutoConfig

        self.device = device_of(torch, device)
        run = plan_run(
            self.cfg,
            self.tokenizer,
            self.train_summary,
            self.eval_summary,
            world=self.world,
            device=self.device,
            model_config=AutoConfig.from_pretrained(self.source.location).to_dict(),
        )
        # From here on the job is the resolved one (its `started` record and config.json show it).
        self.run_plan = run
        self.hp, self.cfg = run.hp, run.cfg
        hp = self.hp
        self.resolved_auto = run.resolved_auto
        self.examples: list[Example] = run.examples
        self.eval_examples: list[Example] = run.eval_examples
        self.train_stats = run.train_stats
        self.lengths, self.trained, self.plan = run.lengths, run.trained, run.plan
        self.loss_units, self.eval_units = run.loss_units, run.eval_units
        self.batches_per_epoch = run.plan.batches_per_epoch
        self.steps_per_epoch = run.steps_per_epoch
        self.total_steps, self.total_epochs = run.total_steps, run.total_epochs
        self.attn_implementation, self.layout = run.attn_implementation, run.layout
        self.efficiency = run.efficiency
        self.memory_estimate = run.memory
        use_gc = run.gradient_checkpointing
        model, info = load_model(
            self.cfg,
            self.source,
            device,
            attn_implementation=self.attn_implementation,
            gradient_checkpointing=use_gc,
        )
        from .objective import PreferenceLoss, TokenLoss

        self.peft_model = model
        self.model_info = {
            **info,
            "estimated_peak_memory_mb": round(self.memory_estimate.peak_bytes / 2**20),
            "shape": asdict(run.shape),  # what the dry run matches past jobs' speed by
        }
        self.preference = self.cfg.preference
        objective: Any
        if self.preference:
            assert isinstance(hp.dpo_beta, float)
            objective = PreferenceLoss(
                model,
                method=self.cfg.method,
                beta=hp.dpo_beta,
                gamma_beta_ratio=hp.simpo_gamma_beta_ratio,
            )
        else:
            objective = TokenLoss(model)
        if hp.torch_compile:
            # The decoder only: the chunked loss loops in Python over a varying number of chunks.
            objective._parts[0].compile(dynamic=True)
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        optimizer = torch.optim.AdamW(
            params, lr=hp.learning_rate, weight_decay=hp.weight_decay, fused=_fused_adamw(torch, device)
        )
        self.scheduler = get_scheduler(
            hp.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=math.ceil(hp.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.model, self.optimizer = acc.prepare(objective, optimizer)
        from accelerate.utils import DistributedType

        self.fsdp = acc.distributed_type == DistributedType.FSDP

        self.step = 0
        self.tokens_seen = 0
        self.elapsed_before = 0.0
        if self.cfg.resume_from:
            state = checkpoint.load(
                Path(self.cfg.resume_from),
                model=self.peft_model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                rank=self.rank,
            )
            if state.get("total_steps") != self.total_steps:
                raise TrainerError(
                    "invalid_config",
                    f"checkpoint was made for {state.get('total_steps')} total steps, this job has "
                    f"{self.total_steps}: resume with the same data and hyperparameters",
                    EXIT_USER_ERROR,
                    extra={"param": "resume_from"},
                )
            self.step = int(state["step"])
            self.tokens_seen = int(state.get("tokens_seen", 0))
            self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        self.start_step = self.step
        self._write_started()

    def _write_started(self) -> None:
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(self.cfg.to_json() + "\n", encoding="utf-8")
        self.events.write(
            "started",
            total_steps=self.total_steps,
            total_epochs=self.total_epochs,
            steps_per_epoch=self.steps_per_epoch,
            start_step=self.start_step,
            num_examples=self.run_plan.num_examples,
            num_eval_examples=self.run_plan.num_eval_examples,
            truncated_examples=self.train_stats["truncated_examples"],
            dropped_examples=self.train_stats["dropped_examples"],
            num_tokens=self.train_stats["num_tokens"],
            trainable_tokens=sum(self.trained),
            padding_efficiency=self.efficiency.padding_efficiency,
            micro_batch_tokens=self.efficiency.micro_batch_tokens,
            attn_implementation=self.attn_implementation,
            format=self.train_summary.format,
            chat_template="fallback" if self.fallback_template else "model",
            trainable_params=self.model_info["trainable_params"],
            total_params=self.model_info["total_params"],
            model=self.source.to_dict(),
            method=self.cfg.method,
            adapter=self.cfg.adapter,
            model_setup=self.model_info,
            # Not the service's MLflow server: a record is shown to the job's API key, and that URI is
            # the operator's (it may carry credentials).
            config=self.cfg.model_dump(exclude={"mlflow_tracking_uri"}),
            resolved_auto=self.resolved_auto,
            versions=library_versions(),
            device=self.device.label,
            num_processes=self.world,
            mixed_precision=str(self.accelerator.mixed_precision),
        )
        self._log(
            f"started: {self.run_plan.num_examples} {'pairs' if self.preference else 'examples'}, "
            f"{self.total_steps} steps "
            f"({self.total_epochs} epochs), from step {self.start_step}, "
            f"{self.model_info['trainable_params']:,} trainable / {self.model_info['total_params']:,} params "
            f"on {self.device.label}, {self.attn_implementation} attention, padding efficiency "
            f"{self.efficiency.padding_efficiency:.1%}"
        )

    # ---- train -------------------------------------------------------------------------------------------

    def _tensors(self, indices: list[int]) -> dict[str, Any]:
        from .objective import batch_tensors

        laid = lay_out([self.examples[i] for i in indices], self.layout, self.tokenizer.pad_token_id)
        return batch_tensors(laid, self.accelerator.device, pairs=self.preference)

    def _stop_requested(self) -> bool:
        flag = self.stop.requested
        if self.world > 1:
            t = self.torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    def _sum_over_ranks(self, *values: Any) -> list[float]:
        """Tensors summed over every process, as floats: the one host sync of a logging step."""
        t = self.torch.stack([v.detach().double().reshape(()) for v in values])
        if self.world > 1:
            t = self.accelerator.reduce(t, reduction="sum")
        return [float(x) for x in t.tolist()]

    def _peak_memory_mb(self) -> float:
        if self.accelerator.device.type == "cuda":
            return self.torch.cuda.max_memory_allocated(self.accelerator.device) / 2**20
        # ru_maxrss is in KiB on Linux: the process's peak resident set.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def train(self) -> int:
        """The loop. The loss of a step is the mean over the trained tokens (a preference method: the
        pairs) of all its micro-batches on all processes (as HF's `num_items_in_batch`): each micro-batch's
        summed loss is divided by the step's count of them, which every process knows from the plan without
        communicating. Nothing here waits for the device except a logging step, a stop check across
        processes and the end."""
        from .objective import summarise

        torch = self.torch
        acc = self.accelerator
        hp = self.hp
        ga = hp.gradient_accumulation_steps
        self.model.train()
        loop_start = time.monotonic()
        window_start = loop_start
        zero = torch.zeros((), device=acc.device, dtype=torch.float32)
        no_aux = torch.zeros(5 if self.preference else 1, device=acc.device, dtype=torch.float32)
        window_loss, window_aux = zero.clone(), no_aux.clone()
        window_trained, window_tokens = 0, 0
        last_loss: tuple[Any, int] = (zero, 0)
        self.last_eval_loss: float | None = None
        self.last_eval_step = -1
        first_epoch = self.step // self.steps_per_epoch
        if self._stop_requested():
            return self._interrupt()
        for epoch in range(first_epoch, self.total_epochs):
            every_rank = self.plan.epoch(epoch, self.cfg.seed)
            mine = every_rank[self.rank]
            first_group = self.step - epoch * self.steps_per_epoch if epoch == first_epoch else 0
            for group_index in range(first_group, self.steps_per_epoch):
                lo, hi = group_index * ga, (group_index + 1) * ga
                in_step = [i for rank in every_rank for batch in rank[lo:hi] for i in batch]
                step_trained = sum(self.loss_units[i] for i in in_step)
                step_tokens = sum(self.lengths[i] for i in in_step)
                scale = self.world / max(1, step_trained)  # DDP averages over processes: undo it
                group = [self._tensors(indices) for indices in mine[lo:hi]]  # ahead of the compute
                step_loss = zero.clone()
                for i, batch in enumerate(group):
                    sync = i == len(group) - 1
                    with acc.no_sync(self.model) if not sync else nullcontext(), acc.autocast():
                        loss_sum, aux = self.model(**batch)
                        acc.backward(loss_sum * scale)
                    step_loss += loss_sum.detach().float()
                    window_aux += aux.detach().float().reshape(-1)
                if hp.max_grad_norm > 0:
                    grad_norm: Any = acc.clip_grad_norm_(self.params, hp.max_grad_norm)
                else:
                    grad_norm = None
                log_now = self.step + 1 == self.total_steps or (self.step + 1) % hp.logging_steps == 0
                if grad_norm is None and log_now:
                    norms = [torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None]
                    grad_norm = torch.linalg.vector_norm(torch.stack(norms))
                self.optimizer.step()
                step_lr = float(self.scheduler.get_last_lr()[0])  # the rate this step trained at
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                window_loss += step_loss
                window_trained += step_trained
                window_tokens += step_tokens
                self.tokens_seen += step_tokens
                last_loss = (step_loss, step_trained)
                if log_now:
                    loss_sum_all, *aux_all = self._sum_over_ranks(window_loss, *window_aux.unbind())
                    now = time.monotonic()
                    done = self.step - self.start_step
                    per_step = (now - loop_start) / max(1, done)
                    self._metrics(
                        epoch=epoch + (group_index + 1) / self.steps_per_epoch,
                        loss=loss_sum_all / max(1, window_trained),
                        summary=summarise(aux_all, window_trained, preference=self.preference),
                        grad_norm=float(grad_norm),
                        learning_rate=step_lr,
                        tokens_per_second=window_tokens / max(1e-9, now - window_start),
                        elapsed=self.elapsed_before + now - self.started_at,
                        eta=per_step * (self.total_steps - self.step),
                    )
                    window_start = now
                    window_loss, window_aux, window_trained, window_tokens = (
                        zero.clone(),
                        no_aux.clone(),
                        0,
                        0,
                    )
                at_epoch_end = group_index == self.steps_per_epoch - 1
                if self.eval_examples and (
                    (hp.eval_steps is not None and self.step % hp.eval_steps == 0)
                    or (hp.eval_steps is None and at_epoch_end)
                ):
                    self._evaluate(epoch + (group_index + 1) / self.steps_per_epoch)
                finished = self.step >= self.total_steps
                if hp.save_steps is not None and self.step % hp.save_steps == 0 and not finished:
                    self._checkpoint()
                if self._stop_requested() and not finished:
                    return self._interrupt()
                if finished:
                    break
            if self.step >= self.total_steps:
                break
        if self.eval_examples and self.last_eval_step != self.step:
            # max_steps ended the run between evaluations: the final adapter still gets its eval_loss.
            self._evaluate(self.step / self.steps_per_epoch)
        (final_sum,) = self._sum_over_ranks(last_loss[0])
        return self._complete(final_sum / max(1, last_loss[1]))

    def _metrics(
        self,
        *,
        epoch: float,
        loss: float,
        summary: dict[str, float],
        grad_norm: float,
        learning_rate: float,
        tokens_per_second: float,
        elapsed: float,
        eta: float,
    ) -> None:
        self.events.write(
            "metrics",
            step=self.step,
            total_steps=self.total_steps,
            epoch=round(epoch, 4),
            loss=loss,
            token_accuracy=summary["token_accuracy"],
            learning_rate=learning_rate,
            grad_norm=grad_norm,
            tokens_per_second=round(tokens_per_second, 1),
            tokens_seen=self.tokens_seen,
            elapsed_seconds=round(elapsed, 3),
            eta_seconds=round(eta, 1),
            peak_memory_mb=round(self._peak_memory_mb(), 1),
            **{k: v for k, v in summary.items() if k != "token_accuracy"},
        )
        rewards = ""
        if "rewards_margin" in summary:
            rewards = f" margin {summary['rewards_margin']:.3f} reward acc {summary['rewards_accuracy']:.2f}"
        self._log(
            f"step {self.step}/{self.total_steps} epoch {epoch:.2f} loss {loss:.4f} "
            f"acc {summary['token_accuracy']:.3f}{rewards} lr {learning_rate:.3g} grad_norm {grad_norm:.3f} "
            f"{tokens_per_second:.0f} tok/s eta {eta:.0f}s"
        )

    def _evaluate(self, epoch: float) -> float:
        torch = self.torch
        acc = self.accelerator
        self.model.eval()
        from .objective import batch_tensors, summarise

        loss_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
        aux = torch.zeros(5 if self.preference else 1, device=acc.device, dtype=torch.float64)
        mine = self.eval_units[self.rank :: self.world]
        bs = int(self.hp.batch_size)
        with torch.no_grad():
            for i in range(0, len(mine), bs):
                laid = lay_out(
                    [self.eval_examples[j] for unit in mine[i : i + bs] for j in unit],
                    self.layout,
                    self.tokenizer.pad_token_id,
                )
                with acc.autocast():
                    batch_loss, batch_aux = self.model(
                        **batch_tensors(laid, acc.device, pairs=self.preference)
                    )
                loss_sum += batch_loss.double()
                aux += batch_aux.double().reshape(-1)
        total_loss, *total_aux = self._sum_over_ranks(loss_sum, *aux.unbind())
        units = self.run_plan.eval_loss_units
        self.model.train()
        eval_loss = total_loss / max(1, units)
        summary = {f"eval_{k}": v for k, v in summarise(total_aux, units, preference=self.preference).items()}
        self.last_eval_loss = eval_loss
        self.last_eval_step = self.step
        self.events.write("eval", step=self.step, epoch=round(epoch, 4), eval_loss=eval_loss, **summary)
        shown = " ".join(f"{k} {v:.3f}" for k, v in summary.items())
        self._log(f"eval at step {self.step}: eval_loss {eval_loss:.4f} {shown}")
        return eval_loss

    def _checkpoint(self) -> Path:
        path = checkpoint.checkpoint_path(self.output_dir, self.step)
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.is_main:
            checkpoint.begin(path)
        acc.wait_for_everyone()
        checkpoint.save_rank_state(path, self.rank, sharded_optimizer=self.optimizer if self.fsdp else None)
        adapter_state = self._adapter_state()
        acc.wait_for_everyone()
        if self.is_main:
            checkpoint.save(
                path,
                adapter_state=adapter_state,
                model=self.peft_model,
                tokenizer=self.tokenizer,
                optimizer=None if self.fsdp else self.optimizer,
                scheduler=self.scheduler,
                state={
                    "step": self.step,
                    "total_steps": self.total_steps,
                    "epoch": self.step // self.steps_per_epoch,
                    "step_in_epoch": self.step % self.steps_per_epoch,
                    "tokens_seen": self.tokens_seen,
                    "elapsed_seconds": self.elapsed_before + time.monotonic() - self.started_at,
                    "seed": self.cfg.seed,
                },
            )
            self.events.write("checkpoint", step=self.step, path=str(path))
            self._log(f"checkpoint saved: {path}")
        self.accelerator.wait_for_everyone()
        return path

    def _adapter_state(self) -> dict[str, Any] | None:
        """None (peft reads the adapter from the model itself), or under FSDP the adapter's weights gathered
        whole on the main process: every process must call this (it is a collective)."""
        if not self.fsdp:
            return None
        full = self.accelerator.get_state_dict(self.model)  # TokenLoss's: the peft model under "model."
        return {k.removeprefix("model."): v for k, v in full.items() if "lora_" in k}

    def _interrupt(self) -> int:
        path = self._checkpoint()
        self.events.write(
            "interrupted",
            step=self.step,
            total_steps=self.total_steps,
            checkpoint_path=str(path),
            signal=self.stop.signal_name,
            exit_code=EXIT_INTERRUPTED,
        )
        self._log(f"interrupted by {self.stop.signal_name} at step {self.step}; resume: --resume-from {path}")
        return EXIT_INTERRUPTED

    def _complete(self, final_loss: float) -> int:
        adapter_dir = self.output_dir / "adapter"
        self.accelerator.wait_for_everyone()
        adapter_state = self._adapter_state()
        if self.is_main:
            self.peft_model.save_pretrained(
                adapter_dir, state_dict=adapter_state, selected_adapters=["default"]
            )
            self.tokenizer.save_pretrained(adapter_dir)
        self.events.write(
            "completed",
            adapter_path=str(adapter_dir),
            final_loss=final_loss,
            final_eval_loss=self.last_eval_loss,
            duration_seconds=round(self.elapsed_before + time.monotonic() - self.started_at, 3),
            total_steps=self.total_steps,
            tokens_seen=self.tokens_seen,
            exit_code=EXIT_OK,
        )
        self._log(f"completed: adapter in {adapter_dir}, final loss {final_loss:.4f}")
        return EXIT_OK

    # ---- cleanup -----------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        acc = getattr(self, "accelerator", None)
        if acc is not None:
            acc.end_training()
            if self.torch.distributed.is_initialized():
                self.torch.distributed.destroy_process_group()

    def run(self) -> int:
        try:
            self.setup()
            return self.train()
        finally:
            self.cleanup()

    def _log(self, message: str) -> None:
        if self.is_main:
            print(f"[tuning_trainer] {message}", flush=True)

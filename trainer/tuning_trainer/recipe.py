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
from importlib import metadata
from pathlib import Path
from typing import Any

from . import checkpoint
from .config import JobConfig, resolve_auto
from .data import DatasetSummary
from .dataset import collate, ensure_chat_template, pack, tokenize_file
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USER_ERROR, INVALID_DATA, TrainerError
from .events import EventWriter
from .modelling import ModelSource, load_model, load_tokenizer
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
        set_seed(self.cfg.seed)
        hp = self.hp

        self.tokenizer = load_tokenizer(self.source.location)
        self.fallback_template = ensure_chat_template(self.tokenizer)
        train = tokenize_file(
            self.cfg.training_file,
            self.train_summary.format,
            self.tokenizer,
            max_seq_length=hp.max_seq_length,
            train_on_inputs=hp.train_on_inputs,
        )
        if not train.examples:
            raise TrainerError(
                INVALID_DATA,
                f"no training example has a trainable token within max_seq_length={hp.max_seq_length}",
                EXIT_USER_ERROR,
                extra={"data_code": "no_trainable_tokens", "line": None, "file": "training_file"},
            )
        self.train_stats = train.stats()
        self.train_examples = pack(train.examples, hp.max_seq_length) if hp.packing else train.examples
        self.eval_examples: list[dict[str, list[int]]] = []
        if self.cfg.validation_file and self.eval_summary is not None:
            ev = tokenize_file(
                self.cfg.validation_file,
                self.eval_summary.format,
                self.tokenizer,
                max_seq_length=hp.max_seq_length,
                train_on_inputs=hp.train_on_inputs,
            )
            self.eval_examples = ev.examples

        hp, self.resolved_auto = resolve_auto(hp, len(self.train_examples))
        # From here on the job is the resolved one (its `started` record and config.json show it).
        self.hp, self.cfg = hp, self.cfg.model_copy(update={"hyperparameters": hp})
        assert isinstance(hp.batch_size, int) and isinstance(hp.epochs, int)
        self.world = acc.num_processes
        self.rank = acc.process_index
        # Each process takes every world-th example of the shuffled order; the tail that does not divide
        # evenly is left out of that epoch so that all processes take the same number of steps.
        self.per_rank = len(self.train_examples) // self.world
        if self.per_rank == 0:
            raise TrainerError(
                INVALID_DATA,
                f"{len(self.train_examples)} examples cannot be shared by {self.world} processes",
                EXIT_USER_ERROR,
                extra={"data_code": "too_few_examples", "line": None, "file": "training_file"},
            )
        self.batches_per_epoch = math.ceil(self.per_rank / hp.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / hp.gradient_accumulation_steps)
        if hp.max_steps is not None:
            self.total_steps = hp.max_steps
            self.total_epochs = math.ceil(hp.max_steps / self.steps_per_epoch)
        else:
            self.total_steps = self.steps_per_epoch * hp.epochs
            self.total_epochs = hp.epochs

        self.model, info = load_model(self.cfg, self.source, acc.device)
        self.model_info = info
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params = params
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        self.scheduler = get_scheduler(
            hp.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=math.ceil(hp.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.model, self.optimizer = acc.prepare(self.model, optimizer)

        self.step = 0
        self.tokens_seen = 0
        self.elapsed_before = 0.0
        if self.cfg.resume_from:
            state = checkpoint.load(
                Path(self.cfg.resume_from),
                model=acc.unwrap_model(self.model),
                optimizer=self.optimizer,
                scheduler=self.scheduler,
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

    def _device(self) -> str:
        dev = self.accelerator.device
        if dev.type == "cuda":
            return f"cuda:{dev.index or 0} ({self.torch.cuda.get_device_name(dev)})"
        return str(dev)

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
            num_examples=len(self.train_examples),
            num_eval_examples=len(self.eval_examples),
            truncated_examples=self.train_stats["truncated_examples"],
            dropped_examples=self.train_stats["dropped_examples"],
            num_tokens=self.train_stats["num_tokens"],
            format=self.train_summary.format,
            chat_template="fallback" if self.fallback_template else "model",
            trainable_params=self.model_info["trainable_params"],
            total_params=self.model_info["total_params"],
            model=self.source.to_dict(),
            method=self.cfg.method,
            model_setup=self.model_info,
            config=self.cfg.to_dict(),
            resolved_auto=self.resolved_auto,
            versions=library_versions(),
            device=self._device(),
            num_processes=self.world,
            mixed_precision=str(self.accelerator.mixed_precision),
        )
        self._log(
            f"started: {len(self.train_examples)} examples, {self.total_steps} steps "
            f"({self.total_epochs} epochs), from step {self.start_step}, "
            f"{self.model_info['trainable_params']:,} trainable / {self.model_info['total_params']:,} params "
            f"on {self._device()}"
        )

    # ---- train -------------------------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        gen = self.torch.Generator().manual_seed(self.cfg.seed + epoch)
        order = self.torch.randperm(len(self.train_examples), generator=gen).tolist()
        mine = order[self.rank :: self.world][: self.per_rank]
        bs = int(self.hp.batch_size)
        return [mine[i : i + bs] for i in range(0, len(mine), bs)]

    def _batch(self, examples: list[dict[str, list[int]]]) -> dict[str, Any]:
        batch = collate(examples, self.tokenizer.pad_token_id)
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _stop_requested(self) -> bool:
        flag = self.stop.requested
        if self.world > 1:
            t = self.torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    def _peak_memory_mb(self) -> float:
        if self.accelerator.device.type == "cuda":
            return self.torch.cuda.max_memory_allocated(self.accelerator.device) / 2**20
        # ru_maxrss is in KiB on Linux: the process's peak resident set.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def train(self) -> int:
        torch = self.torch
        acc = self.accelerator
        hp = self.hp
        ga = hp.gradient_accumulation_steps
        self.model.train()
        loop_start = time.monotonic()
        window_start, window_tokens = loop_start, 0
        last_loss = float("nan")
        self.last_eval_loss: float | None = None
        self.last_eval_step = -1
        first_epoch = self.step // self.steps_per_epoch
        if self._stop_requested():
            return self._interrupt()
        for epoch in range(first_epoch, self.total_epochs):
            batches = self._epoch_batches(epoch)
            first_group = self.step - epoch * self.steps_per_epoch if epoch == first_epoch else 0
            for group_index in range(first_group, self.steps_per_epoch):
                group = batches[group_index * ga : (group_index + 1) * ga]
                losses = []
                step_tokens = 0
                for i, indices in enumerate(group):
                    batch = self._batch([self.train_examples[j] for j in indices])
                    sync = i == len(group) - 1
                    with acc.no_sync(self.model) if not sync else nullcontext(), acc.autocast():
                        out = self.model(**batch)
                        acc.backward(out.loss / len(group))
                    losses.append(out.loss.detach().float())
                    step_tokens += int(batch["attention_mask"].sum().item())
                if hp.max_grad_norm > 0:
                    grad_norm = acc.clip_grad_norm_(self.params, hp.max_grad_norm)
                else:
                    norms = [torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None]
                    grad_norm = torch.linalg.vector_norm(torch.stack(norms))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                loss_t = torch.stack(losses).mean()
                tokens_t = torch.tensor([step_tokens], device=acc.device)
                if self.world > 1:
                    loss_t = acc.reduce(loss_t, reduction="mean")
                    tokens_t = acc.reduce(tokens_t, reduction="sum")
                last_loss = float(loss_t.item())
                self.tokens_seen += int(tokens_t.item())
                window_tokens += int(tokens_t.item())
                if self.step % hp.logging_steps == 0 or self.step == self.total_steps:
                    now = time.monotonic()
                    done = self.step - self.start_step
                    per_step = (now - loop_start) / max(1, done)
                    self._metrics(
                        epoch=epoch + (group_index + 1) / self.steps_per_epoch,
                        loss=last_loss,
                        grad_norm=float(grad_norm.item()) if hasattr(grad_norm, "item") else float(grad_norm),
                        tokens_per_second=window_tokens / max(1e-9, now - window_start),
                        elapsed=self.elapsed_before + now - self.started_at,
                        eta=per_step * (self.total_steps - self.step),
                    )
                    window_start, window_tokens = now, 0
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
        return self._complete(last_loss)

    def _metrics(
        self,
        *,
        epoch: float,
        loss: float,
        grad_norm: float,
        tokens_per_second: float,
        elapsed: float,
        eta: float,
    ) -> None:
        lr = float(self.scheduler.get_last_lr()[0])
        self.events.write(
            "metrics",
            step=self.step,
            total_steps=self.total_steps,
            epoch=round(epoch, 4),
            loss=loss,
            learning_rate=lr,
            grad_norm=grad_norm,
            tokens_per_second=round(tokens_per_second, 1),
            tokens_seen=self.tokens_seen,
            elapsed_seconds=round(elapsed, 3),
            eta_seconds=round(eta, 1),
            peak_memory_mb=round(self._peak_memory_mb(), 1),
        )
        self._log(
            f"step {self.step}/{self.total_steps} epoch {epoch:.2f} loss {loss:.4f} lr {lr:.3g} "
            f"grad_norm {grad_norm:.3f} {tokens_per_second:.0f} tok/s eta {eta:.0f}s"
        )

    def _evaluate(self, epoch: float) -> float:
        torch = self.torch
        acc = self.accelerator
        self.model.eval()
        loss_sum = torch.zeros((), device=acc.device, dtype=torch.float64)
        count = torch.zeros((), device=acc.device, dtype=torch.float64)
        mine = self.eval_examples[self.rank :: self.world]
        bs = int(self.hp.batch_size)
        with torch.no_grad():
            for i in range(0, len(mine), bs):
                batch = self._batch(mine[i : i + bs])
                with acc.autocast():
                    out = self.model(**batch)
                n = (batch["labels"][:, 1:] != -100).sum()
                loss_sum += out.loss.double() * n
                count += n
        if self.world > 1:
            loss_sum = acc.reduce(loss_sum, reduction="sum")
            count = acc.reduce(count, reduction="sum")
        self.model.train()
        eval_loss = float((loss_sum / count.clamp(min=1)).item())
        self.last_eval_loss = eval_loss
        self.last_eval_step = self.step
        self.events.write("eval", step=self.step, epoch=round(epoch, 4), eval_loss=eval_loss)
        self._log(f"eval at step {self.step}: eval_loss {eval_loss:.4f}")
        return eval_loss

    def _checkpoint(self) -> Path:
        path = checkpoint.checkpoint_path(self.output_dir, self.step)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            checkpoint.save(
                path,
                model=self.accelerator.unwrap_model(self.model),
                tokenizer=self.tokenizer,
                optimizer=self.optimizer,
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
        if self.is_main:
            model = self.accelerator.unwrap_model(self.model)
            model.save_pretrained(adapter_dir)
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
            if self.world > 1 and self.torch.distributed.is_initialized():
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

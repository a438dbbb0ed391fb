"""from_checkpoint: a new job that starts from another job's adapter (SFT, then DPO on the same adapter).

The reference names a job of the caller's: `JOB_ID` (its final adapter: the job succeeded and the adapter
was not deleted), `JOB_ID:STEP` or OpenAI's `ftckpt-<job>-<step>` (a checkpoint still on disk). Checked on
create, before the job is stored:
- another key's job is the same 404 `checkpoint_not_found` as an unknown one (nothing leaks between keys);
- the source was trained on another base model: 422 `checkpoint_model_mismatch` (an adapter only means
  something on the weights it was trained on);
- the LoRA shape is the source's (r, alpha, target modules, dropout: what the weights are), as the source
  job's hyperparameters say it ("all-linear" stays "all-linear"). The job's own lora_* hyperparameters take
  those values; one sent with another value is 422 `checkpoint_mismatch`.
  The adapter type (qlora or lora: how the base is loaded under it) is the source's unless one is sent.
The adapter's files are copied into the new job's folder (`init_adapter/`) before the job is queued, so
that deleting the source job later cannot take them away from a job that has not started yet.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import APIError
from ..schema.jobs import CreateTuningRequest
from ..states import JobStatus
from ..storage.store import Store
from .checkpoints import checkpoint_dirs

INIT_ADAPTER = "init_adapter"
# What a create with from_checkpoint may be refused with, by status (the routes document them).
ERRORS = {
    404: ("checkpoint_not_found",),
    409: ("checkpoint_not_ready",),
    422: ("checkpoint_model_mismatch", "checkpoint_mismatch"),
}
# What PeftModel.from_pretrained needs: the optimizer, scheduler and RNG states of a checkpoint stay behind
# (the new job starts a fresh optimizer).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# The hyperparameters that are the adapter's shape: a job started from an adapter has its source's.
SHAPE = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


@dataclass(frozen=True)
class Source:
    job_id: str
    step: int | None
    folder: Path
    """The adapter folder to copy"""


def parse(ref: str) -> tuple[str, int | None]:
    """(job id, checkpoint step or None for the final adapter) of a from_checkpoint value (its pattern was
    checked by the schema)."""
    if ref.startswith("ftckpt-"):
        job, step = ref.removeprefix("ftckpt-").rsplit("-", 1)
        return f"ftjob-{job}", int(step)
    job, _, step = ref.partition(":")
    return job, int(step) if step else None


def _not_found(ref: str, why: str = "") -> APIError:
    return APIError(404, ERRORS[404][0], f"No checkpoint {ref!r}{why}", param="from_checkpoint")


async def resolve(
    request: CreateTuningRequest, *, owner: str, store: Store, jobs_dir: Path
) -> tuple[CreateTuningRequest, Source]:
    """The request with its LoRA shape set from the source adapter, and where that adapter is."""
    ref = request.from_checkpoint
    assert ref is not None
    job_id, step = parse(ref)
    row = await store.get_job(job_id)
    if row is None or row["owner"] != owner:
        raise _not_found(ref)
    job_dir = jobs_dir / job_id
    if step is not None:
        on_disk = await asyncio.to_thread(checkpoint_dirs, job_dir)
        if step not in on_disk:
            have = ", ".join(str(s) for s in sorted(on_disk)) or "none"
            raise _not_found(ref, f": job {job_id} has no checkpoint at step {step} (checkpoints: {have})")
        folder = on_disk[step]
    else:
        adapter = Path(row["adapter_path"]).resolve() if row["adapter_path"] else None
        if (
            row["status"] != JobStatus.SUCCEEDED.value
            or row.get("model_deleted_at") is not None
            or adapter is None
            or not adapter.is_relative_to(job_dir.resolve())
        ):
            raise APIError(
                409,
                ERRORS[409][0],
                f"Job {job_id} is {row['status']} and has no final adapter to start from; name one of its "
                f"checkpoints as {job_id}:STEP, or wait until it succeeds",
                param="from_checkpoint",
            )
        folder = adapter
    if not await asyncio.to_thread(lambda: all((folder / name).is_file() for name in ADAPTER_FILES)):
        raise _not_found(ref, ": its adapter files are gone")
    if row["model"] != request.model:
        raise APIError(
            422,
            ERRORS[422][0],
            f"from_checkpoint {ref!r} was trained on model {row['model']!r}, not {request.model!r}: an "
            "adapter continues only on the base it was trained on",
            param="from_checkpoint",
        )
    source_hp = row["hyperparameters"] or {}
    shape = {name: source_hp[name] for name in SHAPE if name in source_hp}
    sent = request.hyperparameters.model_fields_set
    for name, value in shape.items():
        mine = getattr(request.hyperparameters, name)
        if name in sent and _normal(mine) != _normal(value):
            raise APIError(
                422,
                ERRORS[422][1],
                f"hyperparameters.{name} is {mine!r} but from_checkpoint {ref!r} has {value!r}: the "
                f"adapter's shape is the checkpoint's (leave {name} out)",
                param=f"hyperparameters.{name}",
            )
    hp = request.hyperparameters.model_copy(update=shape)
    update: dict[str, Any] = {"hyperparameters": hp}
    if "adapter" not in request.model_fields_set and not request.legacy_method:
        update["adapter"] = (row["request"] or {}).get("adapter", request.adapter)
    return request.model_copy(update=update), Source(job_id, step, folder)


def _normal(value: Any) -> Any:
    return sorted(value) if isinstance(value, list) else value


def copy_adapter(source: Source, job_dir: Path) -> None:
    """The source adapter's files into `job_dir/init_adapter` (written aside, then renamed into place).
    Raises 404 checkpoint_not_found when they went away since `resolve` (the source job deleted meanwhile)."""
    try:
        _copy(source, job_dir)
    except OSError:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise _not_found(source.job_id, ": its adapter files are gone") from None


def _copy(source: Source, job_dir: Path) -> None:
    target = job_dir / INIT_ADAPTER
    tmp = job_dir / f".{INIT_ADAPTER}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copy2(source.folder / name, tmp / name)
    (tmp / "source.json").write_text(
        json.dumps({"job_id": source.job_id, "step": source.step}) + "\n", encoding="utf-8"
    )
    tmp.rename(target)

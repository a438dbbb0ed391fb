"""A job's checkpoints on disk: which are complete, what the API shows of them, what a download sends, and
how a job is queued again to continue from one (a resume, or recovery after a service restart).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import APIError
from ..states import JobStatus
from ..storage.store import Store

_CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")
# What makes a checkpoint directory complete enough to resume from (the trainer renames it into place last).
_CHECKPOINT_FILES = ("trainer_state.pt",)


def checkpoint_dirs(job_dir: Path) -> dict[int, Path]:
    """step -> complete `checkpoints/checkpoint-N` directory of a job (half-written ones skipped)."""
    out: dict[int, Path] = {}
    try:
        entries = list((job_dir / "checkpoints").iterdir())
    except OSError:
        return out
    for entry in entries:
        m = _CHECKPOINT_DIR_RE.match(entry.name)
        if m and entry.is_dir() and all((entry / f).is_file() for f in _CHECKPOINT_FILES):
            out[int(m.group(1))] = entry
    return out


def requeue_fields(checkpoint: Path | None) -> dict[str, Any]:
    """The row's columns when a job is queued again to continue from `checkpoint` (a resume, or recovery
    after a service restart): the last run's outcome, process and supervision go; started_at is kept."""
    return {
        "resume_from": None if checkpoint is None else str(checkpoint),
        "finished_at": None,
        "error": None,
        "terminal_record": None,
        "fine_tuned_model": None,
        "adapter_path": None,
        "cancel_requested_at": None,
        "pause_requested_at": None,
        "deadline_requested_at": None,
        "exit_code": None,
        "pid": None,
        "pgid": None,
        "proc_start_time": None,
        "supervisor_id": None,
        "supervisor_heartbeat": None,
        "gpu_lease": None,
    }


def set_aside_checkpoints(job_dir: Path, attempt: int) -> None:
    """Move the job's checkpoints to `checkpoints.before-retry-<attempt>/`: a retry that starts over with
    another plan cannot continue them, nor can any later resume, which takes the newest one in
    `checkpoints/` (kept, not deleted: they are the user's)."""
    folder = job_dir / "checkpoints"
    if folder.is_dir():
        folder.rename(job_dir / f"checkpoints.before-retry-{attempt}")


async def describe(store: Store, job_id: str, on_disk: dict[int, Path]) -> list[dict[str, Any]]:
    """The API objects of the checkpoints found on disk, oldest first, each with the metrics at its step."""
    records, _ = await store.records(job_id, limit=100_000, only_types=("checkpoint",))
    created: dict[int, float] = {}
    for rec in records:
        if isinstance(rec.get("step"), int):
            created[rec["step"]] = rec["time"]  # a step saved twice (pause, then save_steps): the last
    out = []
    for step in sorted(on_disk):
        out.append(
            {
                "object": "tuning.checkpoint",
                "id": f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}",
                "job_id": job_id,
                "step": step,
                "created_at": int(created.get(step) or on_disk[step].stat().st_mtime),
                "path": f"checkpoints/{on_disk[step].name}",
                "metrics": await store.metrics_at(job_id, step),
            }
        )
    return out


def download_target(
    row: dict[str, Any], job_dir: Path, on_disk: dict[int, Path], checkpoint: int | None
) -> tuple[Path, str]:
    """The folder to download and the archive's name: the final adapter, or checkpoint-N."""
    job_id = row["id"]
    if checkpoint is not None:
        if checkpoint not in on_disk:
            have = ", ".join(str(s) for s in sorted(on_disk)) or "none"
            raise APIError(
                404,
                "checkpoint_not_found",
                f"Job {job_id} has no checkpoint at step {checkpoint} (checkpoints: {have})",
                param="checkpoint",
            )
        return on_disk[checkpoint], f"{job_id}-checkpoint-{checkpoint}.tar.gz"
    adapter = Path(row["adapter_path"]).resolve() if row["adapter_path"] else None
    if (
        row["status"] != JobStatus.SUCCEEDED.value
        or adapter is None
        or not adapter.is_relative_to(job_dir)
        or not (adapter / "adapter_config.json").is_file()
    ):
        raise APIError(
            409,
            "adapter_not_ready",
            f"Job {job_id} is {row['status']} and has no final adapter yet; download a checkpoint with "
            "?checkpoint=STEP (see its checkpoints) or wait until it succeeds",
            param="id",
        )
    return adapter, f"{job_id}-adapter.tar.gz"

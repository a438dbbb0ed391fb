"""The public shape of a job (docs/api.md, "The job object") and the fingerprint of a create request."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..schema.jobs import TERMINAL_EVENTS
from ..states import JobStatus


def request_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def public_job(row: dict[str, Any], queue_position: int | None = None) -> dict[str, Any]:
    req = row["request"]
    started, finished = row["started_at"], row["finished_at"]
    job: dict[str, Any] = {
        "id": row["id"],
        "object": "tuning.job",
        "status": row["status"],
        "model": row["model"],
        "fine_tuned_model": row["fine_tuned_model"],
        "adapter_path": row["adapter_path"],
        "training_file": req.get("training_file"),
        "validation_file": req.get("validation_file"),
        "method": req["method"],
        "adapter": req.get("adapter", "qlora"),
        "from_checkpoint": req.get("from_checkpoint"),
        "hyperparameters": row["hyperparameters"],
        "suffix": req.get("suffix"),
        "seed": req["seed"],
        "metadata": req.get("metadata") or {},
        "resume_on_restart": bool(req.get("resume_on_restart")),
        "num_gpus": int(req.get("num_gpus", 1)),
        "distributed": req.get("distributed", "ddp"),
        "created_at": int(row["created_at"]),
        "started_at": None if started is None else int(started),
        "finished_at": None if finished is None else int(finished),
        "duration": None if started is None or finished is None else round(finished - started, 3),
        "queue_position": queue_position if row["status"] == JobStatus.QUEUED.value else None,
        "trained_tokens": row["trained_tokens"],
        "error": row["error"],
        "metrics": row["metrics"],
        "integrations": req.get("integrations") or [],
        "priority": int(req.get("priority") or 0),
        "max_runtime_seconds": req.get("max_runtime_seconds"),
        "auto_retry": int(req.get("auto_retry") or 0),
        "retries": int(row.get("retries") or 0),
    }
    if req.get("webhook_url"):  # only on jobs that have one: the documented shape stays as it was
        job["webhook_url"] = req["webhook_url"]
        job["webhook_events"] = req.get("webhook_events") or list(TERMINAL_EVENTS)
    return job

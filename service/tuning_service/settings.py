"""Service settings, read once from environment variables (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEV_KEYS = ("test-key-001", "test-key-002")


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _gpus_env() -> list[str]:
    # "0,1,2" -> ["0", "1", "2"]; empty -> no GPUs (the trainer runs on CPU).
    raw = os.environ.get("TUNING_GPUS", "").strip()
    return [g.strip() for g in raw.split(",") if g.strip()]


@dataclass
class Settings:
    data_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("TUNING_DATA_DIR", ".tuning")).resolve()
    )
    files_root: Path = field(
        default_factory=lambda: Path(os.environ.get("TUNING_FILES_ROOT", os.getcwd())).resolve()
    )
    models_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("TUNING_MODELS_DIR", "models")).resolve()
    )
    # Comma-separated plaintext keys from the environment (hashed in memory). Empty -> keys from the database,
    # or the development keys when the database has none.
    api_keys: list[str] = field(
        default_factory=lambda: [
            k.strip() for k in os.environ.get("TUNING_API_KEYS", "").split(",") if k.strip()
        ]
    )
    max_concurrent_jobs: int = field(default_factory=lambda: _int_env("TUNING_MAX_CONCURRENT_JOBS", 1))
    gpus: list[str] = field(default_factory=_gpus_env)
    cancel_grace_seconds: float = field(
        default_factory=lambda: _float_env("TUNING_CANCEL_GRACE_SECONDS", 30.0)
    )
    log_level: str = field(default_factory=lambda: os.environ.get("TUNING_LOG_LEVEL", "INFO").upper())
    # Limits on what a request may carry.
    max_request_bytes: int = field(default_factory=lambda: _int_env("TUNING_MAX_REQUEST_BYTES", 1024 * 1024))
    max_file_bytes: int = field(default_factory=lambda: _int_env("TUNING_MAX_FILE_BYTES", 512 * 1024 * 1024))
    # Per data file: longest line (bytes) and most examples; over them -> 422 naming the line.
    max_line_bytes: int = field(default_factory=lambda: _int_env("TUNING_MAX_LINE_BYTES", 1024 * 1024))
    max_rows: int = field(default_factory=lambda: _int_env("TUNING_MAX_ROWS", 1_000_000))
    # Per API key token bucket (ratelimit.py): requests/s on average, bursts of BURST; RPS 0 turns it off.
    rate_limit_rps: float = field(default_factory=lambda: _float_env("TUNING_RATE_LIMIT_RPS", 50.0))
    rate_limit_burst: int = field(default_factory=lambda: _int_env("TUNING_RATE_LIMIT_BURST", 200))
    # Seconds of silence on a log stream before a heartbeat comment.
    heartbeat_seconds: float = field(default_factory=lambda: _float_env("TUNING_HEARTBEAT_SECONDS", 15.0))
    # How often the supervisor tails a running job's files.
    poll_interval_seconds: float = field(default_factory=lambda: _float_env("TUNING_POLL_INTERVAL", 0.05))
    # Test/ops override of the launcher: a JSON list replacing `python -m accelerate.commands.launch [flags]
    # -m tuning_trainer` (e.g. a fake trainer in supervision tests). Empty -> the real trainer.
    trainer_command: str = field(default_factory=lambda: os.environ.get("TUNING_TRAINER_COMMAND", ""))
    # CPU threads per trainer on a machine without GPUs (accelerate's --num_cpu_threads_per_process);
    # 0 -> the CPU count divided among the concurrent jobs.
    cpu_threads: int = field(default_factory=lambda: _int_env("TUNING_CPU_THREADS", 0))
    # A worker that has not refreshed its supervision heartbeat for this long is presumed dead, and another
    # worker adopts its jobs (a dead worker on this host is detected at once from its pid).
    supervisor_stale_seconds: float = field(
        default_factory=lambda: _float_env("TUNING_SUPERVISOR_STALE_SECONDS", 15.0)
    )
    # How often the scheduler looks for queued jobs submitted through another worker.
    schedule_interval_seconds: float = field(
        default_factory=lambda: _float_env("TUNING_SCHEDULE_INTERVAL", 0.5)
    )

    # /metrics: empty -> open to anyone who can reach the port; set -> `Authorization: Bearer <this>` needed.
    metrics_key: str = field(default_factory=lambda: os.environ.get("TUNING_METRICS_KEY", "").strip())
    # Webhooks (webhooks.py): time per attempt, retry backoff (first delay, cap), how long a delivery is
    # retried, and networks a webhook may reach besides public addresses (CIDRs, e.g. 127.0.0.0/8 in tests).
    webhook_timeout_seconds: float = field(default_factory=lambda: _float_env("TUNING_WEBHOOK_TIMEOUT", 10.0))
    webhook_backoff_seconds: float = field(default_factory=lambda: _float_env("TUNING_WEBHOOK_BACKOFF", 5.0))
    webhook_backoff_max_seconds: float = field(
        default_factory=lambda: _float_env("TUNING_WEBHOOK_BACKOFF_MAX", 3600.0)
    )
    webhook_retry_seconds: float = field(
        default_factory=lambda: _float_env("TUNING_WEBHOOK_RETRY_SECONDS", 86400.0)
    )
    webhook_allow_networks: list[str] = field(
        default_factory=lambda: [
            n.strip() for n in os.environ.get("TUNING_WEBHOOK_ALLOW_NETWORKS", "").split(",") if n.strip()
        ]
    )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "tuning.db"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def metrics_dir(self) -> Path:
        return self.data_dir / "metrics"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "tuning_service.log"

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

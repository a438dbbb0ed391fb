"""The executor seam: what runs a job's trainer, and what the supervisor asks of it.

The supervisor (supervisor.py) owns everything a job promises: its states, records, progress, the grace
period before a forced stop, the verdict. An executor only runs processes: it launches a trainer for a claimed
job, says whether the run is still going, hands over the run's new records, and stops it. Two exist:
`local` (process groups on this machine, local.py) and `ray` (Ray Jobs on a cluster, ray.py); the scheduler,
the states, the records, the webhooks and /metrics do not know which one ran a job (the job row's `executor`
column does, so a restarted service follows each run with the executor that started it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..tailer import Record

# The failure code of a run whose executor lost it: an unreachable Ray head, a job Ray no longer knows.
EXECUTOR_LOST = "executor_lost"


@dataclass
class Run:
    """What the supervisor knows of one run it follows."""

    job_id: str
    handle: Any = None  # the executor's own (local: the Popen of a trainer this process started)
    exit_code: int | None = None
    ended_at: float | None = None  # when the executor saw the trainer's main process end
    kill_sent_at: float | None = None
    # Set when the run is gone without a verdict: (code, message) of the job's failure.
    lost: tuple[str, str] | None = None
    # Stopped before the trainer ever ran (a Ray job still waiting for resources): nothing to wait for.
    never_started: bool = False
    # A line the executor adds to the failure's log tail (e.g. Ray's own account of the end).
    note: str | None = None
    # When max_runtime_seconds runs out (supervisor: the trainer is then asked to checkpoint and stop).
    deadline_at: float | None = None


class Executor(ABC):
    name: ClassVar[str]

    async def open(self) -> None:
        """Before recovery: connect, and settle what the cluster still runs for jobs that have ended."""
        return None

    async def close(self) -> None:
        """The service stops: runs go on (a restarted service re-attaches to them)."""
        return None

    @abstractmethod
    async def admit_gpus(self, num_gpus: int) -> int:
        """The GPUs a new job will hold, for the `num_gpus` it asked (0: it runs on CPU); an APIError for a
        job this executor can never run."""

    def gpus_to_lease(self) -> list[str]:
        """The GPU ids the scheduler leases to jobs itself (none where the cluster assigns them)."""
        return []

    def plan(self, row: dict[str, Any]) -> dict[str, Any]:
        """Row columns stored before the trainer is started (the id the run will have), so that a service
        killed while starting it finds the run again."""
        return {}

    @abstractmethod
    async def launch(self, row: dict[str, Any], job_dir: Path, config: dict[str, Any]) -> tuple[dict, Any]:
        """Start the trainer of a claimed job with this config (written into the job folder). Returns the row
        columns that identify the run and the run's handle. Raises if nothing was started."""

    @abstractmethod
    async def alive(self, row: dict[str, Any]) -> bool:
        """Is the job's run still going (or not known to have ended: an unreachable cluster)?"""

    @abstractmethod
    async def observe(self, run: Run, row: dict[str, Any], now: float) -> bool:
        """Look at the run: fill in `run` (exit code, end, loss) and say whether anything of it is left."""

    @abstractmethod
    async def read(self, row: dict[str, Any], job_dir: Path, *, final: bool) -> tuple[list[Record], dict]:
        """The run's records not yet stored (after the row's position columns), and the new values of those
        columns; ([], {}) when nothing is new. `final`: the run has ended, read everything that is left."""

    @abstractmethod
    async def stop(self, row: dict[str, Any], *, force: bool = False) -> bool:
        """Ask the run to stop (the trainer checkpoints on SIGTERM); `force`: now. False if nothing was
        signalled."""

    @abstractmethod
    async def log_tail(self, row: dict[str, Any], job_dir: Path, n: int) -> list[str]:
        """The last `n` lines of the run's output, for a failure's `log_tail`."""

    def forget(self, job_id: str) -> None:
        """The run's verdict is stored: drop what was kept to follow it."""
        return None

"""The Ray executor: each run of a job is a Ray Job on an existing cluster; SQLite stays the source of truth
and Ray only runs the process.

- The submission id is the job id (a resumed job's later runs: `<job id>-run2`, ... since Ray refuses an id it
  has seen). It is stored before the job is submitted, so a service killed in between finds its run again.
- The entrypoint is the local executor's argument list (`accelerate launch ... -m tuning_trainer --config`),
  run by the interpreter `TUNING_RAY_PYTHON` on the worker; `entrypoint_num_gpus` is the job's `num_gpus`
  (Ray sets CUDA_VISIBLE_DEVICES), and only the environment the trainer needs travels in the runtime env
  (never the service's secrets: Ray's dashboard shows a job's runtime env to anyone who reaches it).
- Records travel on the job's stdout behind a marker (stream.py), tailed through Ray's log websocket (a file
  poll on Ray's side: about a second late), and read whole once the job has ended.
- Data and artifacts sit on storage shared by the service and the workers: paths under the service's
  `data_dir` are given to the trainer under `TUNING_RAY_DATA_DIR` and mapped back in its records.
- `stop_job` sends SIGTERM to the trainer's processes (Ray's own SIGKILL follows RAY_JOB_STOP_WAIT_TIME_S
  later). It does not stop a job still PENDING for resources: such a run ends `cancelled` (or `paused`) at
  once here, its queued stop ends it on Ray the moment it would start, and on start-up any Ray job still
  running for a job that has ended here is stopped.
- A head that does not answer for `executor_lost_seconds`, or a job Ray no longer knows (a restarted head
  without GCS fault tolerance forgets every job), ends the job `failed` with code `executor_lost`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from tuning_trainer.events import STDOUT_ENV

from ...errors import APIError
from ...settings import Settings
from ...states import ACTIVE, JobStatus
from ...storage.store import Store
from ..tailer import Record
from .base import EXECUTOR_LOST, Executor, Run
from .local import trainer_argv
from .stream import LineBuffer, split_lines, stream_records

log = logging.getLogger("tuning_service.executor.ray")

# The trainer's config fields that hold paths (as the service sees them; mapped for the workers).
CONFIG_PATHS = ("training_file", "validation_file", "output_dir", "init_adapter", "resume_from")
# Variables of the service's environment that reach the trainer on Ray (nothing else does).
PASSTHROUGH_ENV = (
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "COVERAGE_PROCESS_START",
    # Experiment trackers' own switches (never their credentials: those travel in the job's credentials
    # file, engine/credentials.py).
    "WANDB_MODE",
    "WANDB_BASE_URL",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
CALL_TIMEOUT = 5.0  # seconds a call to the head may take (a whole log: LOGS_TIMEOUT)
LOGS_TIMEOUT = 30.0
STATUS_MAX_AGE = 0.25  # seconds a job's Ray status is reused by the supervisor's (much faster) ticks
NODES_MAX_AGE = 10.0
RECONNECT_SECONDS = 1.0
PENDING, RUNNING = "PENDING", "RUNNING"


class JobUnknown(Exception):
    """Ray answered 404 for the submission id."""


def stop_marker(job_dir: Path, ref: str) -> Path:
    """A file whose presence makes the run `ref` exit before it starts the trainer."""
    return job_dir / f".stopped-{ref}"


def next_ref(row: dict[str, Any]) -> str:
    """The submission id of the job's next run: the job id, then `<job id>-run2`, `-run3`, ..."""
    job_id, prev = row["id"], row.get("executor_ref")
    if not prev:
        return job_id
    _, _, n = prev.rpartition("-run")
    return f"{job_id}-run{int(n) + 1 if prev != job_id and n.isdigit() else 2}"


@dataclass
class _Tail:
    ref: str
    buffer: LineBuffer = field(default_factory=LineBuffer)
    task: asyncio.Task[None] | None = None
    started: float = 0.0


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.address = settings.ray_address.rstrip("/")
        self._client: Any = None
        self._tails: dict[str, _Tail] = {}
        self._status: dict[str, tuple[float, Any]] = {}
        self._unreachable: dict[str, float] = {}
        self._nodes: tuple[float, list[dict[str, Any]]] | None = None
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=5.0), retries=False)
        # This service among others that may share the cluster: its database, by path and host.
        self.instance = f"{socket.gethostname()}:{settings.db_path}"

    # ---- paths on the shared storage ---------------------------------------------------------------------

    def to_worker(self, path: str) -> str:
        """A service path as the workers see it (only paths under data_dir move)."""
        root = self.settings.ray_data_dir
        if root is None:
            return path
        p = Path(path)
        try:
            return str(root / p.relative_to(self.settings.data_dir))
        except ValueError:
            return path

    def to_service(self, path: str) -> str:
        root = self.settings.ray_data_dir
        if root is None:
            return path
        try:
            return str(self.settings.data_dir / Path(path).relative_to(root))
        except ValueError:
            return path

    # ---- talking to the head -----------------------------------------------------------------------------

    async def _call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT, **kwargs: Any) -> Any:
        """A JobSubmissionClient call off the event loop: 404 -> JobUnknown; no answer, an error status or no
        answer within `timeout` -> ConnectionError (Ray's client sets no timeout of its own: a head that
        hangs would otherwise stall every job's supervision)."""

        def call() -> Any:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient  # the `ray` extra; checked in open()

                self._client = JobSubmissionClient(self.address)  # asks the head its version
            return getattr(self._client, method)(*args, **kwargs)

        try:
            return await asyncio.wait_for(asyncio.to_thread(call), timeout)
        except RuntimeError as exc:
            if "status code 404" in str(exc):
                raise JobUnknown(str(exc)) from None
            failure: Exception = exc  # another error status (a 5xx: the head is there, but unwell)
        except asyncio.TimeoutError:
            failure = TimeoutError(f"no answer in {timeout:g} s")
        except Exception as exc:  # requests' and Ray's own errors for a head that does not answer
            failure = exc
        self._nodes = None  # what the head said of its nodes is not trusted any longer
        raise ConnectionError(f"the Ray head at {self.address} does not answer: {failure}") from failure

    async def _info(self, ref: str, *, max_age: float = STATUS_MAX_AGE) -> Any:
        now = time.monotonic()
        cached = self._status.get(ref)
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        info = await self._call("get_job_info", ref)
        self._status[ref] = (now, info)
        return info

    async def open(self) -> None:
        try:
            import ray.job_submission  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "TUNING_EXECUTOR=ray needs Ray's job client: pip install 'tuning[ray]'"
            ) from None
        try:
            await self._stop_leftovers()
        except ConnectionError as exc:
            # Recovery goes on: jobs on an unreachable head fail with executor_lost if it does not come back.
            log.warning("%s", exc)

    def _metadata(self, job_id: str) -> dict[str, str]:
        # Whose job it is: another service (another database) may share the cluster.
        return {"tuning_job": job_id, "tuning_service": self.instance}

    async def _stop_leftovers(self) -> None:
        """Stop every Ray job of this service whose run is not the job's current one here (a run stopped while
        still PENDING, the job since ended, paused or resumed as a new run)."""
        for job in await self._call("list_jobs", timeout=LOGS_TIMEOUT):
            meta = job.metadata or {}
            job_id = meta.get("tuning_job")
            if not job_id or meta.get("tuning_service") != self.instance or job.status.is_terminal():
                continue
            row = await self.store.get_job(job_id)
            current = row is not None and row["executor_ref"] == job.submission_id
            if not current or JobStatus(row["status"]) not in ACTIVE:  # type: ignore[index]
                log.info("Ray job %s outlived its run here: stopping it", job.submission_id)
                try:
                    await self._call("stop_job", job.submission_id)
                except JobUnknown:
                    pass

    async def close(self) -> None:
        for job_id in list(self._tails):
            self.forget(job_id)

    async def admit_gpus(self, num_gpus: int) -> int:
        try:
            nodes = await asyncio.to_thread(self._alive_nodes)
        except Exception as exc:
            raise APIError(
                503,
                "executor_unavailable",
                f"The Ray cluster at {self.address} does not answer ({exc}); try again later",
            ) from None
        most = max((int(n.get("resources_total", {}).get("GPU", 0)) for n in nodes), default=0)
        if num_gpus <= max(1, most):
            # A cluster without GPUs trains on CPU (one process), as a machine without GPUs does.
            return num_gpus if most else 0
        where = (
            f"any node of the Ray cluster has ({most}): a job runs on one node, training across nodes is not "
            "supported yet"
            if most
            else "the Ray cluster has (none: it trains on CPU)"
        )
        raise APIError(
            422,  # as on one machine: a valid value this cluster cannot honour
            "not_enough_gpus",
            f"num_gpus {num_gpus} is more GPUs than {where}: ask for at most {max(1, most)}",
            param="num_gpus",
        )

    def _alive_nodes(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self._nodes is not None and now - self._nodes[0] < NODES_MAX_AGE:
            return self._nodes[1]
        r = self._http.request("GET", f"{self.address}/api/v0/nodes?detail=1&limit=10000")
        if r.status != 200:
            raise ConnectionError(f"GET /api/v0/nodes: HTTP {r.status}")
        nodes = [n for n in json.loads(r.data)["data"]["result"]["result"] if n.get("state") == "ALIVE"]
        self._nodes = (now, nodes)
        return nodes

    # ---- runs --------------------------------------------------------------------------------------------

    def plan(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"executor_ref": next_ref(row), "stream_lines": 0, "stream_seq": 0}

    async def launch(self, row: dict[str, Any], job_dir: Path, config: dict[str, Any]) -> tuple[dict, Any]:
        ref = row["executor_ref"]
        worker_config = {
            k: self.to_worker(v) if k in CONFIG_PATHS and isinstance(v, str) else v for k, v in config.items()
        }
        config_path = job_dir / "config.json"
        config_path.write_text(json.dumps(worker_config, indent=2, sort_keys=True), encoding="utf-8")
        num_gpus = int(row["num_gpus"] or 0)
        argv, extra_env = trainer_argv(
            self.settings,
            gpus=num_gpus,
            distributed=(row["request"] or {}).get("distributed", "ddp"),
            threads=max(1, int(self.settings.ray_num_cpus)),
        )
        if not self.settings.trainer_command:
            argv[0] = self.settings.ray_python or sys.executable
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env.update(extra_env)
        env.update(
            {
                "TUNING_MODELS_DIR": self.to_worker(str(self.settings.models_dir)),
                "PYTHONUNBUFFERED": "1",
                STDOUT_ENV: "1",
                # Read by the Ray process that supervises the entrypoint, on whichever node it runs: after
                # stop_job, the trainer gets our grace period to checkpoint before Ray's SIGKILL (Ray's own
                # default is 3 s).
                "RAY_JOB_STOP_WAIT_TIME_S": str(math.ceil(self.settings.cancel_grace_seconds)),
            }
        )
        # `exec`: Ray runs the entrypoint through a shell; the launcher then replaces it. The guard: a run
        # stopped while still PENDING (stop_marker) exits at once if Ray starts it anyway.
        guard = f"test -e {shlex.quote(self.to_worker(str(stop_marker(job_dir, ref))))} && exit 0"
        entrypoint = f"{guard}; exec " + shlex.join([*argv, "--config", self.to_worker(str(config_path))])
        try:
            await self._call(
                "submit_job",
                entrypoint=entrypoint,
                submission_id=ref,
                runtime_env={"env_vars": env},
                entrypoint_num_cpus=self.settings.ray_num_cpus,
                entrypoint_num_gpus=num_gpus or None,
                metadata=self._metadata(row["id"]),
            )
        except ConnectionError:
            # The answer may be what was lost, not the submission: a job Ray has is ours to follow.
            try:
                await self._info(ref, max_age=0)
            except (JobUnknown, ConnectionError):
                raise
            log.warning("job %s: the submission's answer was lost, but Ray has %s", row["id"], ref)
        log.info("job %s: submitted to Ray as %s: %s", row["id"], ref, entrypoint)
        return {}, None

    async def alive(self, row: dict[str, Any]) -> bool:
        ref = row.get("executor_ref")
        if not ref:
            return False
        try:
            info = await self._info(ref, max_age=0)
        except JobUnknown:
            return False
        except ConnectionError:
            return True  # not known to have ended: followed, and lost if the head stays away
        return str(info.status) in (PENDING, RUNNING)

    async def observe(self, run: Run, row: dict[str, Any], now: float) -> bool:
        ref = row["executor_ref"]
        if not ref:  # (the id is stored before anything is submitted: a row written some other way)
            run.lost = (EXECUTOR_LOST, "the job has no Ray submission id")
            return False
        # Once the trainer has said its last word, its end is near: ask every tick, not every STATUS_MAX_AGE.
        max_age = 0.0 if row.get("terminal_record") else STATUS_MAX_AGE
        try:
            info = await self._info(ref, max_age=max_age)
        except JobUnknown:
            run.lost = (
                EXECUTOR_LOST,
                f"Ray does not know job {ref}: a head restarted without GCS fault tolerance forgets every "
                "job (or the service stopped while submitting it)",
            )
            return False
        except ConnectionError as exc:
            since = self._unreachable.setdefault(run.job_id, now)
            if now - since < self.settings.executor_lost_seconds:
                return True
            run.lost = (
                EXECUTOR_LOST,
                f"the Ray head at {self.address} has not answered for "
                f"{self.settings.executor_lost_seconds:g} s ({exc})",
            )
            return False
        self._unreachable.pop(run.job_id, None)
        status = str(info.status)
        if status == PENDING:
            if row["status"] in (JobStatus.CANCELLING.value, JobStatus.PAUSING.value):
                # Not started: it need not be waited for once it cannot start the trainer any more: the
                # marker makes its entrypoint exit at once, and Ray's queued stop ends it when it would start.
                marker = stop_marker(self.settings.jobs_dir / row["id"], ref)
                await asyncio.to_thread(marker.touch)
                if await self.stop(row):
                    run.never_started = True
                    return False
            return True
        if status == RUNNING:
            return True
        run.exit_code = info.driver_exit_code
        run.ended_at = run.ended_at or now
        if info.message and status != "SUCCEEDED":
            run.note = f"[ray] job {ref} {status}: {info.message}"
        return False

    async def read(self, row: dict[str, Any], job_dir: Path, *, final: bool) -> tuple[list[Record], dict]:
        ref = row["executor_ref"]
        if not ref:
            return [], {}
        start = row["stream_lines"]
        if final:
            try:
                text = await self._call("get_job_logs", ref, timeout=LOGS_TIMEOUT)
            except (JobUnknown, ConnectionError):
                return [], {}
            lines = split_lines(text, final=True)[start:]
        else:
            lines = self._tail(row["id"], ref).buffer.since(start)
        if not lines:
            return [], {}
        records, seq = stream_records(lines, last_seq=row["stream_seq"], to_service_path=self.to_service)
        return records, {"stream_lines": start + len(lines), "stream_seq": seq}

    def _tail(self, job_id: str, ref: str) -> _Tail:
        """The job's log follower: (re)connected when there is none, or the last one ended a while ago (a
        reconnect replays the stream from its start: read() skips what is stored)."""
        tail = self._tails.get(job_id)
        now = time.monotonic()
        if tail is None or tail.ref != ref or (tail.task is not None and tail.task.done()):
            if tail is not None and tail.ref == ref and now - tail.started < RECONNECT_SECONDS:
                return tail
            if tail is not None and tail.task is not None:
                tail.task.cancel()
            tail = _Tail(ref, started=now)
            tail.task = asyncio.create_task(self._follow(tail), name=f"ray-tail-{ref}")
            self._tails[job_id] = tail
        return tail

    async def _follow(self, tail: _Tail) -> None:
        try:
            if self._client is None:
                await self._call("get_version")
            async for chunk in self._client.tail_job_logs(tail.ref):
                tail.buffer.feed(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("log tail of %s ended: %s", tail.ref, exc)

    async def stop(self, row: dict[str, Any], *, force: bool = False) -> bool:
        ref = row.get("executor_ref")
        if not ref:
            return False
        try:
            return bool(await self._call("stop_job", ref))
        except (JobUnknown, ConnectionError) as exc:
            log.warning("job %s: could not stop Ray job %s: %s", row["id"], ref, exc)
            return False

    async def log_tail(self, row: dict[str, Any], job_dir: Path, n: int) -> list[str]:
        records, _ = await self.store.records(row["id"], limit=n, only_types=("log",), newest_first=True)
        return [str(r.get("line", "")) for r in reversed(records)]

    def forget(self, job_id: str) -> None:
        tail = self._tails.pop(job_id, None)
        if tail is not None and tail.task is not None:
            tail.task.cancel()
        for ref in [r for r in self._status if r == job_id or r.startswith(f"{job_id}-run")]:
            del self._status[ref]
        self._unreachable.pop(job_id, None)

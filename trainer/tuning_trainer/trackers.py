"""Experiment trackers: the job's `integrations` (TensorBoard, MLflow, W&B), logged through each tracker's own
library by the main process only.

The trackers are a listener on the run's EventWriter (events.py), which is enabled on the main process
alone: they see exactly the records the run writes, and nothing in the recipe calls them.

- `started`: each tracker starts, with the resolved job (the record's `config`, less `integrations` and
  `mlflow_tracking_uri`: they say where the logs go, and a URI may carry credentials).
- `metrics` and `eval`: one data point per value at the record's step (names below).
- `eval` and `checkpoint`: flush, so what a reader sees of a run is at least as new as its last checkpoint.
- before the terminal record: a last flush; after it, each run is ended as the trainer's outcome says
  (completed: FINISHED, failed: FAILED, interrupted: KILLED; W&B: the exit code, an interrupted run marked
  preempting) and the writers are closed. `close()` (from __main__'s `finally`) ends whatever a run that
  wrote no terminal record left open.

Names: TensorBoard and W&B `train/loss`, `train/token_accuracy`, `train/learning_rate`, `train/grad_norm`,
`train/tokens_per_second`, `train/epoch` (and `train/rewards_*` for preference methods), `eval/loss`,
`eval/token_accuracy` (`eval/rewards_*`); MLflow (whose keys conventionally have no slash) `train_loss`,
`train_token_accuracy`, `learning_rate`, `grad_norm`, `tokens_per_second`, `epoch`, `train_rewards_*`,
`eval_loss`, `eval_token_accuracy`, `eval_rewards_*`.

The failure rule: a tracker that fails at any point (its package missing, a bad URI, the server unreachable,
an exception while logging) costs one `warning` record (code `tracker_failed`) and is turned off for the
rest of the run; the job goes on, and never fails because of a tracker. A failure while ending a run comes
after the terminal record, which must stay the run's last: it is said on stderr only.

A tracker's library is imported only when a job names that tracker (wandb, mlflow and torch.utils.tensorboard
cost about a second each): this module itself needs the standard library alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from .events import TERMINAL

if TYPE_CHECKING:
    from .config import JobConfig, MlflowSettings, WandbSettings
    from .events import EventWriter

WARNING_CODE: Final = "tracker_failed"
INSTALL_HINT: Final = "pip install 'tuning[trackers]'"
MAX_MESSAGE_CHARS: Final = 400  # a warning says what went wrong; the exception's whole text is noise
# The config fields a tracker is not told: where the logs go (an MLflow URI may carry a user and password).
UNTRACKED_FIELDS: Final = ("integrations", "mlflow_tracking_uri")
# Values never to repeat in a warning (the trainer's own secrets.ALLOWED, and MLflow's and Databricks'
# credentials, which their libraries read from the environment).
SECRET_ENV: Final = (
    "HF_TOKEN",
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
)
# MLflow's HTTP client retries 7 times with exponential backoff and no timeout cap worth the name by default:
# an unreachable server would stall the trainer for minutes. Set before mlflow is imported (it reads them
# per request, but some are cached); a value the operator set wins.
MLFLOW_NETWORK_DEFAULTS: Final = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# W&B: how long wandb.init may take to reach its server, and how long the end of a run may wait for the
# upload (it comes after the terminal record, but the process lingers until it is done).
WANDB_INIT_TIMEOUT_S: Final = 30.0
# MLflow's data points go from a background thread; a flush (eval, checkpoint, the end) waits this long at
# most, and the run may be this many requests ahead: beyond either the tracker is turned off (a warning), so
# that a slow server costs the run at most one such wait, within the stop's grace period.
MLFLOW_FLUSH_S: Final = 10.0
MLFLOW_MAX_PENDING: Final = 1000
WANDB_FINISH_TIMEOUT_S: Final = 60.0

# The metrics record's values a tracker logs (the rest, e.g. eta_seconds, are about the trainer itself).
TRAIN_FIELDS: Final = (
    "loss",
    "token_accuracy",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "epoch",
    "rewards_chosen",
    "rewards_rejected",
    "rewards_margin",
    "rewards_accuracy",
)
# MLflow's names for the optimizer's quantities carry no `train_` prefix (as HF Trainer logs them).
MLFLOW_UNPREFIXED: Final = frozenset({"learning_rate", "grad_norm", "tokens_per_second", "epoch"})
MLFLOW_STATUS: Final = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


@dataclass(frozen=True)
class RunInfo:
    """What every tracker starts a run with."""

    job_id: str
    """The output folder's name: the service's job id"""
    output_dir: Path
    config: dict[str, Any]
    """The resolved job, less UNTRACKED_FIELDS"""
    start_step: int
    """Non-zero on a resume"""


@dataclass(frozen=True)
class Outcome:
    """How the run ended: `ended` is the terminal record's type, or None when the run wrote none."""

    ended: str | None
    exit_code: int


class TrackerUnavailable(Exception):
    """A tracker that cannot start, said in words (e.g. its package is missing)."""


class Tracker:
    """One tracker. Every method may raise: Trackers turns the first exception into a warning (or, from
    `finish`, which comes after the terminal record, into a line on stderr) and calls the tracker no more."""

    name: ClassVar[str]
    module: ClassVar[str]
    """The top-level module imported"""
    package: ClassVar[str]
    """What pip installs it as"""

    def _import(self, load: Callable[[], Any]) -> Any:
        """`load()`, with a missing package said as such rather than as an import traceback."""
        try:
            return load()
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == self.module:
                missing = f"the {self.package} package is not installed in the trainer's environment"
                raise TrackerUnavailable(f"{missing} ({INSTALL_HINT})") from None
            raise

    def start(self, run: RunInfo) -> None:
        raise NotImplementedError

    def log(self, kind: str, step: int, values: dict[str, float], wall_time: float) -> None:
        """`kind` is train or eval; `values` are finite numbers, by TRAIN_FIELDS' names (eval: without the
        record's eval_ prefix)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was logged durable (or sent): called on eval, checkpoint and before the end."""

    def finish(self, outcome: Outcome) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Release what the tracker holds after it failed, without waiting on a network (best effort)."""


class TensorboardTracker(Tracker):
    name = "tensorboard"
    module = "tensorboard"
    package = "tensorboard"

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, run: RunInfo) -> None:
        def load() -> Any:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter

        summary_writer = self._import(load)
        # purge_step: a resumed run re-logs the steps after its checkpoint (a retry that starts over, all
        # of them); TensorBoard then drops the earlier attempt's events from that step on, not drawing both.
        self.writer = summary_writer(log_dir=str(run.output_dir / "tensorboard"), purge_step=run.start_step)
        # Markdown: an indented block keeps the JSON's layout.
        text = "\n".join("    " + line for line in json.dumps(run.config, indent=2).splitlines())
        self.writer.add_text("config", text, global_step=run.start_step)

    def log(self, kind: str, step: int, values: dict[str, float], wall_time: float) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{kind}/{key}", value, global_step=step, walltime=wall_time)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, outcome: Outcome) -> None:
        self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MlflowTracker(Tracker):
    """MLflow through MlflowClient (no global active run). Data points go to the server from one background
    thread, in order, so that a remote server's latency never stalls a training step; a failed request
    surfaces at the next log, flush or end."""

    name = "mlflow"
    module = "mlflow"
    package = "mlflow-skinny"

    def __init__(self, settings: MlflowSettings, default_uri: str | None) -> None:
        self.settings = settings
        self.default_uri = default_uri
        self.client: Any = None
        self.run_id: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future[Any]] = []

    def tracking_uri(self, output_dir: Path) -> str:
        return (
            self.settings.tracking_uri
            or self.default_uri
            or (output_dir / "mlruns").resolve().as_uri()  # a file store in the job's folder
        )

    def start(self, run: RunInfo) -> None:
        for name, value in MLFLOW_NETWORK_DEFAULTS.items():
            os.environ.setdefault(name, value)
        uri = self.tracking_uri(run.output_dir)
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store ("maintenance mode") unless asked for; the database store it
            # prefers needs SQLAlchemy, which mlflow-skinny leaves out. A file store in the job's folder is
            # what a job without a server gets (readable by `mlflow ui --backend-store-uri`).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

        def load() -> Any:
            from mlflow.tracking import MlflowClient

            return MlflowClient

        mlflow_client = self._import(load)
        from mlflow.entities import Param

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:  # moved in some release: 6000 since MLflow 2.x
            limit = 6000
        self.client = client = mlflow_client(tracking_uri=uri)
        experiment = self._experiment(self.settings.experiment)
        existing = self._run_to_resume(experiment, run) if run.start_step > 0 else None
        if existing is not None:
            # A resume continues the run of the first attempt; MLflow refuses to change a param's value (the
            # resume's resume_from differs), so only params it lacks are added.
            self.run_id = existing.info.run_id
            client.update_run(self.run_id, status="RUNNING")
            logged = set(existing.data.params)
        else:
            created = client.create_run(experiment, run_name=run.job_id, tags={"tuning.job_id": run.job_id})
            self.run_id = created.info.run_id
            logged = set()
        params = [Param(k, v[:limit]) for k, v in flatten(run.config).items() if k not in logged]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[i : i + 100])
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except Exception:
            # Another job made it between the two calls.
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _run_to_resume(self, experiment: str, run: RunInfo) -> Any:
        if "'" in run.job_id:
            return None  # not expressible in a filter string: a new run of the same name
        runs = self.client.search_runs(
            [experiment],
            filter_string=f"attributes.run_name = '{run.job_id}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    def _raise_failed(self, *, wait: bool) -> None:
        """The first failure among the requests sent (waiting for them all when `wait`, MLFLOW_FLUSH_S at
        most: a server that slow is a failed tracker, not a reason to hold the run), or nothing."""
        if wait and self._pending:
            _, late = futures_wait(self._pending, timeout=MLFLOW_FLUSH_S)
            if late:
                raise TimeoutError(
                    f"{len(late)} request(s) to the MLflow server unanswered after {MLFLOW_FLUSH_S:g} s"
                )
        if len(self._pending) > MLFLOW_MAX_PENDING:
            raise TimeoutError(f"the MLflow server is {len(self._pending)} requests behind the run")
        still: list[Future[Any]] = []
        for future in self._pending:
            if future.done():
                future.result()  # raises the request's exception
            else:
                still.append(future)
        self._pending = still

    def log(self, kind: str, step: int, values: dict[str, float], wall_time: float) -> None:
        from mlflow.entities import Metric

        self._raise_failed(wait=False)
        assert self._executor is not None
        timestamp = int(wall_time * 1000)
        metrics = [Metric(mlflow_key(kind, key), value, timestamp, step) for key, value in values.items()]
        self._pending.append(self._executor.submit(self.client.log_batch, self.run_id, metrics=metrics))

    def flush(self) -> None:
        self._raise_failed(wait=True)

    def finish(self, outcome: Outcome) -> None:
        self._raise_failed(wait=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(outcome.ended or "", "KILLED"))

    def abort(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class WandbTracker(Tracker):
    """W&B: the run's id is the job id and `resume="allow"`, so that a resumed job continues its run (W&B
    ignores the re-logged steps at or before the run's last). WANDB_MODE=offline writes it to
    <output_dir>/wandb/offline-run-* for `wandb sync`. The API key comes from WANDB_API_KEY (the key's own,
    secrets.py) and is never passed, printed or recorded here."""

    name = "wandb"
    module = "wandb"
    package = "wandb"

    def __init__(self, settings: WandbSettings) -> None:
        self.settings = settings
        self.run: Any = None

    def start(self, run: RunInfo) -> None:
        # Settings(silent=True) comes too late for wandb.login's "Loaded credentials" line: the environment's
        # switch silences it too (the operator's own WANDB_SILENT wins).
        os.environ.setdefault("WANDB_SILENT", "true")

        def load() -> Any:
            import wandb

            return wandb

        wandb = self._import(load)
        s = self.settings
        self.run = wandb.init(
            project=s.project,
            entity=s.entity,
            name=s.name or run.job_id,
            id=wandb_run_id(run),
            resume="allow",
            tags=list(s.tags) or None,
            dir=str(run.output_dir),
            config=run.config,
            settings=wandb.Settings(
                init_timeout=WANDB_INIT_TIMEOUT_S,
                finish_timeout=WANDB_FINISH_TIMEOUT_S,
                # The trainer's stdout carries the record protocol: W&B must neither wrap it nor print.
                console="off",
                silent=True,
                # The service's checkout is not the user's code: no git state, no code or job artifacts.
                disable_git=True,
                save_code=False,
                disable_job_creation=True,
                # Independent of any other run in this process (the tests start several).
                reinit="create_new",
            ),
        )

    def log(self, kind: str, step: int, values: dict[str, float], wall_time: float) -> None:
        self.run.log({f"{kind}/{key}": value for key, value in values.items()}, step=step)

    def finish(self, outcome: Outcome) -> None:
        if outcome.ended == "interrupted":
            self.run.mark_preempting()  # stopped to be resumed, not crashed
        self.run.finish(exit_code=outcome.exit_code)

    def abort(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)


def make_trackers(cfg: JobConfig) -> list[Tracker]:
    out: list[Tracker] = []
    for integration in cfg.integrations:
        if integration.type == "tensorboard":
            out.append(TensorboardTracker())
        elif integration.type == "mlflow":
            out.append(MlflowTracker(integration.mlflow, cfg.mlflow_tracking_uri))
        elif integration.type == "wandb":
            out.append(WandbTracker(integration.wandb))
    return out


class Trackers:
    """The EventWriter listener that drives the job's trackers (module docstring)."""

    def __init__(self, trackers: list[Tracker], events: EventWriter, *, output_dir: str | Path) -> None:
        self.events = events
        self.output_dir = Path(output_dir)
        self._waiting = list(trackers)  # until `started`
        self._active: list[Tracker] = []
        self._ended = False

    @classmethod
    def attach(cls, cfg: JobConfig, events: EventWriter) -> Trackers | None:
        """The job's trackers as a listener of `events`; None when it names none, or when this process
        writes no records (not the main one)."""
        if not cfg.integrations or not events.enabled:
            return None
        trackers = cls(make_trackers(cfg), events, output_dir=cfg.output_dir)
        events.listeners.append(trackers)
        return trackers

    # ---- the listener ------------------------------------------------------------------------------------

    def after(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        if kind == "started":
            self._start(record)
        elif kind == "metrics":
            self._log("train", record, {k: record.get(k) for k in TRAIN_FIELDS})
        elif kind == "eval":
            values = {k.removeprefix("eval_"): v for k, v in record.items() if k.startswith("eval_")}
            self._log("eval", record, values)
            self._each("flush", lambda t: t.flush())
        elif kind == "checkpoint":
            self._each("flush", lambda t: t.flush())
        elif kind in TERMINAL:
            exit_code = record.get("exit_code")
            self._end(Outcome(str(kind), exit_code if isinstance(exit_code, int) else 1))

    def before_terminal(self, record: dict[str, Any]) -> None:
        # The last chance for a warning record: whatever fails from here on is said on stderr.
        self._each("flush", lambda t: t.flush())

    def close(self) -> None:
        """End whatever is still open: a run that wrote no terminal record (e.g. SystemExit) ends KILLED."""
        if not self._ended:
            self._end(Outcome(None, 1))

    # ---- the failure rule --------------------------------------------------------------------------------

    def _start(self, record: dict[str, Any]) -> None:
        if not self._waiting:
            return  # started once per process; a second `started` changes nothing
        config = {k: v for k, v in (record.get("config") or {}).items() if k not in UNTRACKED_FIELDS}
        run = RunInfo(
            job_id=self.output_dir.name,
            output_dir=self.output_dir,
            config=config,
            start_step=int(record.get("start_step") or 0),
        )
        waiting, self._waiting = self._waiting, []
        for tracker in waiting:
            try:
                tracker.start(run)
            except Exception as exc:
                self._fail(tracker, "could not start", exc)
            else:
                self._active.append(tracker)

    def _log(self, kind: str, record: dict[str, Any], values: dict[str, Any]) -> None:
        step = int(record.get("step") or 0)
        wall_time = float(record.get("time") or time.time())
        finite = {k: float(v) for k, v in values.items() if _is_number(v)}
        if finite:
            self._each("logging failed", lambda t: t.log(kind, step, finite, wall_time))

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self._active):
            try:
                call(tracker)
            except Exception as exc:
                self._fail(tracker, what, exc)

    def _fail(self, tracker: Tracker, what: str, exc: BaseException) -> None:
        if tracker in self._active:
            self._active.remove(tracker)
        detail = str(exc) if isinstance(exc, TrackerUnavailable) else f"{what}: {describe(exc)}"
        message = short(redact(f"{tracker.name}: {detail}"))
        self.events.write("warning", code=WARNING_CODE, tracker=tracker.name, message=message)
        print(f"warning [{WARNING_CODE}]: {message}", file=sys.stderr, flush=True)
        try:
            tracker.abort()
        except Exception:
            pass  # it failed already; what it still holds goes with the process

    def _end(self, outcome: Outcome) -> None:
        self._ended = True
        self._waiting = []
        active, self._active = self._active, []
        for tracker in active:
            try:
                tracker.finish(outcome)
            except Exception as exc:
                # After the terminal record: no record may follow it.
                message = short(redact(f"{tracker.name}: could not end the run: {describe(exc)}"))
                print(f"warning [{WARNING_CODE}]: {message}", file=sys.stderr, flush=True)


# ---- helpers -----------------------------------------------------------------------------------------------


def wandb_run_id(run: RunInfo) -> str:
    """The job id, so that a resumed run continues its W&B run. A run that starts over from step 0 in a
    job that already has one (a retry without a checkpoint) gets a run of its own: W&B would drop every
    step up to the old run's last."""
    earlier = list((run.output_dir / "wandb").glob("*run-*")) if run.start_step == 0 else []
    return run.job_id if not earlier else f"{run.job_id}-attempt-{len(earlier) + 1}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mlflow_key(kind: str, key: str) -> str:
    if kind == "train":
        return key if key in MLFLOW_UNPREFIXED else f"train_{key}"
    return f"{kind}_{key}"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as MLflow params: nested objects by dotted name (`hyperparameters.learning_rate`), lists
    as JSON, the rest as str() (None, True, 0.0002)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, dict)):
            out[name] = json.dumps(value)
        else:
            out[name] = str(value)
    return out


def describe(exc: BaseException) -> str:
    """An exception on one line: its type and its message (whitespace folded)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


_URI_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """`text` without the secrets it might quote: a URI's user:password, and the values of SECRET_ENV."""
    text = _URI_USERINFO.sub(r"\1***@", text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text

"""Experiment trackers (tuning_trainer/trackers.py): one real run with all three, read back through each
tracker's own reader, and the failure rule on cheap in-process runs of the listener (no training)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.trainer.conftest import events, launch, of_type
from tuning_trainer.config import JobConfig
from tuning_trainer.events import EventWriter, read_events
from tuning_trainer.secrets import SECRETS_FILE, load_secrets
from tuning_trainer.trackers import Outcome, RunInfo, Tracker, Trackers, make_trackers

pytestmark = pytest.mark.timeout(300)

FAKE_WANDB_KEY = "fakewandbkey-" + "0123456789abcdef" * 2  # 45 characters, as unlikely as a real one
LEARNING_RATE = 2e-3


class Run:
    def __init__(self, out: Path, proc: subprocess.CompletedProcess[str]) -> None:
        self.out = out
        self.proc = proc
        self.events = events(out)  # validated strictly against tuning_trainer/records.py


@pytest.fixture(scope="module")
def tracked_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, train_file: Path, valid_file: Path
) -> Run:
    """Six steps with a validation file, a checkpoint at step 3 and all three trackers: TensorBoard, MLflow
    (no server: the file store in the job's folder) and W&B offline, its key given the way the service gives
    it (`.secrets.json`, never the environment)."""
    out = tmp_path_factory.mktemp("tracked") / "ftjob-trackers"
    out.mkdir()
    (out / SECRETS_FILE).write_text(json.dumps({"WANDB_API_KEY": FAKE_WANDB_KEY, "OTHER": "ignored"}))
    job = {
        "model": str(tiny_model_dir),
        "training_file": str(train_file),
        "validation_file": str(valid_file),
        "output_dir": str(out),
        "adapter": "lora",
        "hyperparameters": {
            "max_steps": 6,
            "learning_rate": LEARNING_RATE,
            "logging_steps": 1,
            "save_steps": 3,
            "eval_steps": 3,
        },
        "integrations": [
            {"type": "tensorboard"},
            {"type": "mlflow"},
            {"type": "wandb", "wandb": {"project": "tuning-tests", "tags": ["ci"]}},
        ],
    }
    config = out.parent / "job.json"
    config.write_text(json.dumps(job))
    home = out.parent / "home"  # W&B's own caches and settings stay out of the machine's home
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_API_KEY", raising=False)
        for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            mp.setenv(name, str(home / name.lower()))
        proc = launch("--config", str(config))
    return Run(out, proc)


def test_run_logs_to_every_tracker_without_warnings(tracked_run: Run) -> None:
    assert tracked_run.proc.returncode == 0, tracked_run.proc.stderr[-3000:]
    assert of_type(tracked_run.events, "warning") == []
    assert tracked_run.events[-1]["type"] == "completed"


def test_tensorboard_has_the_runs_scalars(tracked_run: Run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = of_type(tracked_run.events, "metrics")
    evals = of_type(tracked_run.events, "eval")
    acc = EventAccumulator(str(tracked_run.out / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [s.step for s in loss] == [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert [s.value for s in loss] == pytest.approx([m["loss"] for m in metrics], rel=1e-6)  # float32
    for name in ("learning_rate", "token_accuracy", "grad_norm", "tokens_per_second"):
        assert len(acc.Scalars(f"train/{name}")) == len(metrics), name
    eval_loss = acc.Scalars("eval/loss")
    assert [s.step for s in eval_loss] == [e["step"] for e in evals] == [3, 6]
    assert [s.value for s in eval_loss] == pytest.approx([e["eval_loss"] for e in evals], rel=1e-6)
    assert [s.step for s in acc.Scalars("eval/token_accuracy")] == [3, 6]
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_mlflow_file_store_has_the_run(tracked_run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store otherwise
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked_run.out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tuning")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "ftjob-trackers" and run.info.status == "FINISHED"
    params = run.data.params
    assert float(params["hyperparameters.learning_rate"]) == LEARNING_RATE
    assert params["hyperparameters.max_steps"] == "6" and params["adapter"] == "lora"
    assert params["model"].endswith("tiny-llama") and "integrations" not in params
    metrics = of_type(tracked_run.events, "metrics")
    history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(m["step"], pytest.approx(m["loss"])) for m in metrics]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [3, 6]
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == len(metrics)


def test_wandb_offline_run_is_in_the_jobs_folder(tracked_run: Run) -> None:
    (run_dir,) = (tracked_run.out / "wandb").glob("offline-run-*-ftjob-trackers")
    data = (run_dir / "run-ftjob-trackers.wandb").read_bytes()  # W&B's own record log, for `wandb sync`
    assert b"train/loss" in data and b"eval/loss" in data and b"tuning-tests" in data
    assert (run_dir / "files").is_dir() and (run_dir / "logs" / "debug.log").exists()


def test_the_wandb_key_is_recorded_nowhere(tracked_run: Run) -> None:
    key = FAKE_WANDB_KEY.encode()
    leaks = [
        str(p.relative_to(tracked_run.out))
        for p in tracked_run.out.rglob("*")
        if p.is_file() and p.name != SECRETS_FILE and key in p.read_bytes()
    ]
    assert leaks == []
    assert FAKE_WANDB_KEY not in tracked_run.proc.stdout + tracked_run.proc.stderr


# ---- the failure rule, in process (no training) --------------------------------------------------------


def _job(tmp_path: Path, integrations: list[dict[str, Any]], **extra: Any) -> JobConfig:
    out = tmp_path / "ftjob-unit"
    out.mkdir(exist_ok=True)
    return JobConfig.from_dict(
        {
            "model": "m",
            "training_file": "t.jsonl",
            "output_dir": str(out),
            "integrations": integrations,
            **extra,
        }
    )


def _replay(writer: EventWriter, cfg: JobConfig, steps: int = 2, end: str = "completed") -> None:
    """The records of a short run, as the recipe writes them."""
    writer.write("started", config=cfg.to_dict(), start_step=0)
    for step in range(1, steps + 1):
        writer.write(
            "metrics", step=step, loss=2.0 / step, token_accuracy=0.5, learning_rate=1e-3, grad_norm=None
        )
    writer.write("eval", step=steps, epoch=1.0, eval_loss=1.5, eval_token_accuracy=0.6)
    writer.write(end, exit_code=0 if end == "completed" else 1)


def test_a_missing_package_costs_one_warning_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if it were not installed
    cfg = _job(tmp_path, [{"type": "wandb", "wandb": {"project": "p"}}, {"type": "mlflow"}])
    writer = EventWriter(Path(cfg.output_dir) / "events.jsonl")
    assert Trackers.attach(cfg, writer) is not None
    _replay(writer, cfg)
    writer.close()
    records = read_events(Path(cfg.output_dir) / "events.jsonl")
    assert [r["type"] for r in records] == ["started", "warning", "metrics", "metrics", "eval", "completed"]
    warning = records[1]
    assert (warning["code"], warning["tracker"]) == ("tracker_failed", "wandb")
    assert warning["message"] == (
        "wandb: the wandb package is not installed in the trainer's environment "
        "(pip install 'tuning[trackers]')"
    )
    # MLflow went on: the file store in the job's folder has the run, ended FINISHED.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(Path(cfg.output_dir) / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("tuning").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "ftjob-unit"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == [2.0, 1.0]
    assert "grad_norm" not in run.data.metrics  # null values are not data points


def test_a_resumed_job_continues_its_mlflow_run(tmp_path: Path) -> None:
    cfg = _job(tmp_path, [{"type": "mlflow", "mlflow": {"experiment": "resumes"}}])
    out = Path(cfg.output_dir)
    writer = EventWriter(out / "events.jsonl")
    Trackers.attach(cfg, writer)
    _replay(writer, cfg, end="interrupted")
    writer.close()
    resumed = cfg.model_copy(update={"resume_from": str(out / "checkpoints" / "checkpoint-2")})
    writer = EventWriter(out / "events.jsonl")
    Trackers.attach(resumed, writer)
    writer.write("started", config=resumed.to_dict(), start_step=2)
    writer.write("metrics", step=3, loss=0.5)
    writer.write("completed", exit_code=0)
    writer.close()
    assert "warning" not in [r["type"] for r in read_events(out / "events.jsonl")]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("resumes").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["resume_from"] == "None"  # the first attempt's
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0), (3, 0.5)]


def test_an_unreachable_mlflow_server_is_a_warning_within_seconds(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    # The service's default server (TUNING_MLFLOW_TRACKING_URI), which may carry credentials (a job's own URI
    # may not: the schema refuses user:password there, as the job object shows it).
    uri = f"http://user:secret-password@127.0.0.1:{port}"
    cfg = _job(tmp_path, [{"type": "mlflow"}], mlflow_tracking_uri=uri)
    writer = EventWriter(Path(cfg.output_dir) / "events.jsonl")
    Trackers.attach(cfg, writer)
    began = time.monotonic()
    _replay(writer, cfg)
    elapsed = time.monotonic() - began
    writer.close()
    records = read_events(Path(cfg.output_dir) / "events.jsonl")
    assert [r["type"] for r in records] == ["started", "warning", "metrics", "metrics", "eval", "completed"]
    message = records[1]["message"]
    assert message.startswith("mlflow: could not start: ") and f"127.0.0.1:{port}" in message
    assert "secret-password" not in message
    assert elapsed < 15, elapsed  # bounded retries (MLFLOW_NETWORK_DEFAULTS), not minutes


class _Recorder(Tracker):
    name = "recorder"

    def __init__(self, fail_on: str | None = None, fail_at: int = 1) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_on, self.fail_at = fail_on, fail_at

    def _call(self, what: str, arg: Any) -> None:
        self.calls.append((what, arg))
        if what == self.fail_on and sum(c[0] == what for c in self.calls) >= self.fail_at:
            raise RuntimeError(f"{what} broke with key {os.environ.get('WANDB_API_KEY')}")

    def start(self, run: RunInfo) -> None:
        self._call("start", run)

    def log(self, kind: str, step: int, values: dict[str, float], wall_time: float) -> None:
        self._call("log", (kind, step, values))

    def flush(self) -> None:
        self._call("flush", None)

    def finish(self, outcome: Outcome) -> None:
        self._call("finish", outcome)

    def abort(self) -> None:
        self.calls.append(("abort", None))


def test_an_exception_while_logging_turns_that_tracker_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    cfg = _job(tmp_path, [])
    writer = EventWriter(Path(cfg.output_dir) / "events.jsonl")
    broken, healthy = _Recorder(fail_on="log", fail_at=2), _Recorder()
    writer.listeners.append(Trackers([broken, healthy], writer, output_dir=cfg.output_dir))
    _replay(writer, cfg, steps=3)
    writer.close()
    records = read_events(Path(cfg.output_dir) / "events.jsonl")
    types = [r["type"] for r in records]
    assert types == ["started", "metrics", "metrics", "warning", "metrics", "eval", "completed"]
    warning = records[3]
    assert warning["tracker"] == "recorder" and warning["message"].startswith(
        "recorder: logging failed: RuntimeError: log broke with key ***"
    )
    assert FAKE_WANDB_KEY not in (Path(cfg.output_dir) / "events.jsonl").read_text()
    # Off for the rest of the run: no more calls after the failure but the release of what it holds.
    assert [c[0] for c in broken.calls] == ["start", "log", "log", "abort"]
    assert [c[0] for c in healthy.calls] == ["start", "log", "log", "log", "log", "flush", "flush", "finish"]
    assert healthy.calls[-1][1] == Outcome("completed", 0)
    started_with = healthy.calls[0][1]
    assert started_with.job_id == "ftjob-unit" and "integrations" not in started_with.config
    assert healthy.calls[1][1] == ("train", 1, {"loss": 2.0, "token_accuracy": 0.5, "learning_rate": 1e-3})
    assert healthy.calls[4][1] == ("eval", 3, {"loss": 1.5, "token_accuracy": 0.6})


def test_a_failure_while_ending_comes_before_the_terminal_record_or_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _job(tmp_path, [])
    writer = EventWriter(Path(cfg.output_dir) / "events.jsonl")
    flushing, finishing = _Recorder(fail_on="flush", fail_at=2), _Recorder(fail_on="finish")
    trackers = Trackers([flushing, finishing], writer, output_dir=cfg.output_dir)
    writer.listeners.append(trackers)
    _replay(writer, cfg, end="failed")
    trackers.close()  # nothing left to end: the terminal record ended every run
    writer.close()
    types = [r["type"] for r in read_events(Path(cfg.output_dir) / "events.jsonl")]
    # The eval's flush went through, the last one (before `failed`) did not: its warning precedes `failed`.
    assert types == ["started", "metrics", "metrics", "eval", "warning", "failed"]
    assert finishing.calls[-1] == ("finish", Outcome("failed", 1))
    assert "recorder: could not end the run: RuntimeError: finish broke" in capsys.readouterr().err


def test_no_terminal_record_ends_the_runs_killed(tmp_path: Path) -> None:
    cfg = _job(tmp_path, [])
    writer = EventWriter(Path(cfg.output_dir) / "events.jsonl")
    recorder = _Recorder()
    trackers = Trackers([recorder], writer, output_dir=cfg.output_dir)
    writer.listeners.append(trackers)
    writer.write("started", config=cfg.to_dict(), start_step=4)
    trackers.close()
    assert recorder.calls[0][1].start_step == 4 and recorder.calls[-1] == ("finish", Outcome(None, 1))


def test_only_the_main_process_and_only_a_named_tracker(tmp_path: Path) -> None:
    cfg = _job(tmp_path, [{"type": "tensorboard"}])
    assert Trackers.attach(cfg, EventWriter(tmp_path / "e.jsonl", enabled=False)) is None
    assert Trackers.attach(_job(tmp_path, []), EventWriter(tmp_path / "e.jsonl")) is None
    assert [t.name for t in make_trackers(cfg)] == ["tensorboard"]
    # The entry point imports no tracker library until a job's `started` record asks for one.
    probe = (
        "import sys, tuning_trainer.__main__, tuning_trainer.trackers;"
        "print([m for m in ('wandb', 'mlflow', 'tensorboard', 'torch') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def test_secrets_sets_only_the_allowed_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "from-the-environment")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("PATH_EXTRA", raising=False)
    assert load_secrets(tmp_path) == []  # no file: nothing to do
    (tmp_path / SECRETS_FILE).write_text(
        json.dumps({"HF_TOKEN": "hf_job", "WANDB_API_KEY": "wb", "PATH_EXTRA": "x", "TUNING_X": "y"})
    )
    assert load_secrets(tmp_path) == ["HF_TOKEN", "WANDB_API_KEY"]
    assert os.environ["HF_TOKEN"] == "hf_job" and os.environ["WANDB_API_KEY"] == "wb"
    assert "PATH_EXTRA" not in os.environ and "TUNING_X" not in os.environ
    (tmp_path / SECRETS_FILE).write_text('{"HF_TOKEN": "half')
    assert load_secrets(tmp_path) == []


def test_a_flush_waits_for_mlflow_a_bounded_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that takes the requests but never answers: the flush at an eval or checkpoint gives up
    after MLFLOW_FLUSH_S and the tracker is off (one warning), instead of holding the run (and a stop's
    grace period) hostage."""
    from concurrent.futures import Future

    from tuning_trainer import trackers
    from tuning_trainer.config import MlflowSettings

    monkeypatch.setattr(trackers, "MLFLOW_FLUSH_S", 0.2)
    tracker = trackers.MlflowTracker(MlflowSettings(), None)
    tracker._pending = [Future()]  # a request in flight forever
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"unanswered after 0\.2 s"):
        tracker.flush()
    assert time.monotonic() - began < 2
    tracker._pending = [Future() for _ in range(trackers.MLFLOW_MAX_PENDING + 1)]
    with pytest.raises(TimeoutError, match="requests behind the run"):
        tracker._raise_failed(wait=False)


def test_a_wandb_run_that_starts_over_gets_a_run_of_its_own(tmp_path: Path) -> None:
    from tuning_trainer.trackers import RunInfo, wandb_run_id

    def info(start_step: int) -> RunInfo:
        return RunInfo(job_id="ftjob-x", output_dir=tmp_path, config={}, start_step=start_step)

    assert wandb_run_id(info(0)) == "ftjob-x"
    (tmp_path / "wandb" / "offline-run-20261207_010203-ftjob-x").mkdir(parents=True)
    assert wandb_run_id(info(40)) == "ftjob-x"  # a resume continues its run
    assert wandb_run_id(info(0)) == "ftjob-x-attempt-2"  # a retry from the start: W&B would drop its steps

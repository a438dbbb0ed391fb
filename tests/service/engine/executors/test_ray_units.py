"""The Ray executor's own rules without a cluster (the cluster itself: test_ray.py): submission ids, paths
on shared storage, what is submitted, GPU admission, and how a status becomes a verdict. The Ray client is
replaced by a recorder of its calls: only these narrow units use a double."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.service.core_fixtures import make_settings
from tuning_service.engine.executors.base import EXECUTOR_LOST, Run
from tuning_service.engine.executors.ray import JobUnknown, RayExecutor, next_ref
from tuning_service.errors import APIError
from tuning_service.settings import Settings, describe_error
from tuning_trainer.events import STDOUT_ENV


class Recorder:
    """Answers each method with a value (stop_job: True unless given), or raises the exception given."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.answers = answers or {}

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((method, args, kwargs))
        answer = self.answers.get(method, True if method == "stop_job" else None)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def executor(tmp_path: Path, **overrides: Any) -> RayExecutor:
    settings = make_settings(tmp_path, executor="ray", ray_address="http://127.0.0.1:1/", **overrides)
    return RayExecutor(settings, store=None)  # type: ignore[arg-type]  # no unit here reads the store


def test_submission_ids_are_the_job_id_then_numbered_runs() -> None:
    assert next_ref({"id": "ftjob-1", "executor_ref": None}) == "ftjob-1"
    assert next_ref({"id": "ftjob-1", "executor_ref": "ftjob-1"}) == "ftjob-1-run2"
    assert next_ref({"id": "ftjob-1", "executor_ref": "ftjob-1-run2"}) == "ftjob-1-run3"


def test_paths_under_the_data_dir_move_to_the_workers_mount_and_back(tmp_path: Path) -> None:
    ex = executor(tmp_path, ray_data_dir=Path("/mnt/tuning"))
    job = str(ex.settings.data_dir / "jobs" / "j" / "config.json")
    assert ex.to_worker(job) == "/mnt/tuning/jobs/j/config.json"
    assert ex.to_service("/mnt/tuning/jobs/j/adapter") == str(ex.settings.data_dir / "jobs" / "j" / "adapter")
    assert ex.to_worker("/elsewhere/data.jsonl") == "/elsewhere/data.jsonl"  # outside: as is
    same = executor(tmp_path / "b")
    assert same.to_worker(job) == job and same.to_service(job) == job


def test_what_is_submitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TUNING_API_KEYS", "secret-key")  # the service's secrets never travel
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    ex = executor(tmp_path, trainer_command="", ray_data_dir=Path("/mnt/t"), ray_num_cpus=2.0,
                  ray_python="/opt/venv/bin/python")  # fmt: skip
    ex._call = Recorder()  # type: ignore[method-assign]
    job_dir = ex.settings.data_dir / "jobs" / "ftjob-1"
    job_dir.mkdir(parents=True)
    row = {"id": "ftjob-1", "executor_ref": "ftjob-1", "num_gpus": 2, "request": {"distributed": "fsdp"}}
    config = {"output_dir": str(job_dir), "training_file": "/files/train.jsonl", "model": "m"}
    assert asyncio.run(ex.launch(row, job_dir, config)) == ({}, None)
    ((method, _, kw),) = ex._call.calls  # type: ignore[attr-defined]
    assert method == "submit_job" and kw["submission_id"] == "ftjob-1"
    assert kw["entrypoint_num_gpus"] == 2 and kw["entrypoint_num_cpus"] == 2.0
    assert kw["metadata"] == {"tuning_job": "ftjob-1", "tuning_service": ex.instance}
    assert str(ex.settings.db_path) in ex.instance  # this service among others on the cluster
    guard, _, command = kw["entrypoint"].partition("; ")
    assert shlex.split(guard) == ["test", "-e", "/mnt/t/jobs/ftjob-1/.stopped-ftjob-1", "&&", "exit", "0"]
    argv = shlex.split(command)
    assert argv[:4] == ["exec", "/opt/venv/bin/python", "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--num_processes") + 1] == "2" and "--use_fsdp" in argv
    assert argv[-3:] == ["tuning_trainer", "--config", "/mnt/t/jobs/ftjob-1/config.json"]
    env = kw["runtime_env"]["env_vars"]
    assert env[STDOUT_ENV] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == "1"  # the grace period (make_settings: 1 s), not Ray's 3 s
    assert "TUNING_API_KEYS" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    written = json.loads((job_dir / "config.json").read_text())
    assert written["output_dir"] == "/mnt/t/jobs/ftjob-1" and written["training_file"] == "/files/train.jsonl"
    # On a cluster without GPUs: no GPU asked of Ray, and the CPU launch flags.
    ex._call = Recorder()  # type: ignore[method-assign]
    asyncio.run(ex.launch({**row, "num_gpus": 0}, job_dir, config))
    kw = ex._call.calls[0][2]  # type: ignore[attr-defined]
    assert kw["entrypoint_num_gpus"] is None and "--cpu" in shlex.split(kw["entrypoint"])


def test_gpu_admission_by_the_largest_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = executor(tmp_path)
    nodes = [{"resources_total": {"CPU": 8, "GPU": 2}}, {"resources_total": {"CPU": 8, "GPU": 4}}]
    monkeypatch.setattr(ex, "_alive_nodes", lambda: nodes)
    assert asyncio.run(ex.admit_gpus(4)) == 4
    with pytest.raises(APIError) as err:
        asyncio.run(ex.admit_gpus(5))
    assert (
        err.value.status_code == 422 and err.value.code == "not_enough_gpus" and err.value.param == "num_gpus"
    )
    assert "training across nodes is not supported" in err.value.message
    monkeypatch.setattr(ex, "_alive_nodes", lambda: [{"resources_total": {"CPU": 2}}])
    assert asyncio.run(ex.admit_gpus(1)) == 0  # a CPU-only cluster trains on CPU
    with pytest.raises(APIError, match="it trains on CPU"):
        asyncio.run(ex.admit_gpus(2))

    def down() -> list[dict[str, Any]]:
        raise ConnectionError("refused")

    monkeypatch.setattr(ex, "_alive_nodes", down)
    with pytest.raises(APIError) as err:
        asyncio.run(ex.admit_gpus(1))
    assert err.value.status_code == 503 and err.value.code == "executor_unavailable"


def test_a_status_becomes_a_verdict(tmp_path: Path) -> None:
    ex = executor(tmp_path, executor_lost_seconds=5.0)
    row = {"id": "j", "executor_ref": "j", "status": "running"}

    def observe(answer: Any, now: float, run: Run | None = None, **kw: Any) -> tuple[bool, Run]:
        run = run or Run("j")
        ex._status.clear()
        ex._call = Recorder({"get_job_info": answer})  # type: ignore[method-assign]
        return asyncio.run(ex.observe(run, {**row, **kw}, now)), run

    assert observe(SimpleNamespace(status="RUNNING"), 0.0)[0]
    assert observe(SimpleNamespace(status="PENDING"), 0.0)[0]
    # Stopped while PENDING: done here once Ray has queued the stop (and the marker keeps its entrypoint
    # from starting the trainer); a stop Ray did not take is asked again next time.
    ex._call = Recorder({"get_job_info": SimpleNamespace(status="PENDING"), "stop_job": False})  # type: ignore[method-assign]
    ex._status.clear()
    (ex.settings.jobs_dir / "j").mkdir(parents=True)
    assert asyncio.run(ex.observe(Run("j"), {**row, "status": "cancelling"}, 0.0))
    assert (ex.settings.jobs_dir / "j" / ".stopped-j").exists()
    alive, run = observe(SimpleNamespace(status="PENDING"), 0.0, status="cancelling")
    assert not alive and run.never_started
    alive, run = observe(SimpleNamespace(status="FAILED", driver_exit_code=1, message="exited 1"), 3.0)
    assert not alive and run.exit_code == 1 and run.ended_at == 3.0 and "exited 1" in (run.note or "")
    alive, run = observe(JobUnknown("404"), 0.0)
    assert not alive and run.lost is not None and run.lost[0] == EXECUTOR_LOST
    # An unreachable head is waited for executor_lost_seconds, then the run is lost.
    run = Run("j")
    assert observe(ConnectionError("refused"), 100.0, run)[0]
    assert observe(ConnectionError("refused"), 104.0, run)[0]
    alive, run = observe(ConnectionError("refused"), 105.0, run)
    assert not alive and run.lost is not None and "has not answered for 5 s" in run.lost[1]
    # A run never submitted (the service stopped between its claim and the submission) is lost at once.
    alive, run = observe(None, 0.0, executor_ref=None)
    assert not alive and run.lost is not None


def test_ray_needs_an_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        Settings(data_dir=tmp_path, executor="ray")
    assert (
        describe_error(err.value)
        == "TUNING_EXECUTOR=ray needs TUNING_RAY_ADDRESS (e.g. http://127.0.0.1:8265)"
    )


def test_the_service_says_how_to_install_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)  # an import of it fails
    with pytest.raises(RuntimeError, match=r"pip install 'tuning\[ray\]'"):
        asyncio.run(executor(tmp_path).open())


def test_every_failure_to_answer_is_a_connection_error(tmp_path: Path) -> None:
    """Ray's client has no timeout and raises RuntimeError for any error status: a hung head, a 5xx and a
    refused connection must all look the same to the supervisor (waited for, then executor_lost)."""
    ex = executor(tmp_path)

    class Client:
        def get_job_info(self, ref: str) -> Any:
            if ref == "hang":
                time.sleep(0.6)
            if ref == "unknown":
                raise RuntimeError("Request failed with status code 404: Job unknown does not exist.")
            if ref == "unwell":
                raise RuntimeError("Request failed with status code 500: Internal Server Error.")
            raise OSError("Connection refused")

    ex._client = Client()
    with pytest.raises(JobUnknown):
        asyncio.run(ex._call("get_job_info", "unknown"))
    for ref, why in (("hang", "no answer in 0.2 s"), ("unwell", "status code 500"), ("x", "refused")):
        with pytest.raises(ConnectionError, match=why):
            asyncio.run(ex._call("get_job_info", ref, timeout=0.2))


def test_a_lost_submission_answer_is_not_a_failed_launch(tmp_path: Path) -> None:
    ex = executor(tmp_path)
    job_dir = ex.settings.data_dir / "jobs" / "j"
    job_dir.mkdir(parents=True)
    row = {"id": "j", "executor_ref": "j", "num_gpus": 0, "request": {}}
    ex._call = Recorder(
        {"submit_job": ConnectionError("reset"), "get_job_info": SimpleNamespace(status="PENDING")}
    )  # type: ignore[method-assign]
    assert asyncio.run(ex.launch(row, job_dir, {"output_dir": str(job_dir)})) == ({}, None)
    ex._call = Recorder({"submit_job": ConnectionError("reset"), "get_job_info": JobUnknown("404")})  # type: ignore[method-assign]
    with pytest.raises(JobUnknown):
        asyncio.run(ex.launch(row, job_dir, {"output_dir": str(job_dir)}))

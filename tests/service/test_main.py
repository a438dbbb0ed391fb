"""Running the service: `python -m tuning_service`, the `tuning-service` script, `uvicorn
tuning_service.app:app`, the Procfile, defaults with no setup, two workers, bad settings -- and that the
ML stack never loads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.server import ServiceEnv, ServiceProcess, free_port, service_env_vars

ML_MODULES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "tokenizers")
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def test_importing_the_service_loads_no_ml_module() -> None:
    code = (
        "import sys, json, time; t = time.perf_counter();"
        "import tuning_service.app, tuning_service.__main__;"
        f"print(json.dumps({{'ml': sorted(m for m in sys.modules if m.split('.')[0] in {ML_MODULES!r}),"
        " 'seconds': time.perf_counter() - t}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["ml"] == []


def test_a_running_service_has_no_ml_library_loaded(api_service: ServiceProcess) -> None:
    # After real work (validation, a job, a stream), the server process has not mapped torch or friends.
    job = api_service.create_job()
    api_service.post(f"/v1/tunings.cancel/{job['id']}")
    assert api_service.get(f"/v1/tunings.logs/{job['id']}?follow=true").status == 200
    assert api_service.proc is not None
    maps = Path(f"/proc/{api_service.proc.pid}/maps").read_text()
    for lib in ("libtorch", "/torch/", "/bitsandbytes/", "/tokenizers/", "/safetensors/"):
        assert lib not in maps, lib


def test_help_documents_the_options() -> None:
    for cmd in (
        [sys.executable, "-m", "tuning_service", "--help"],
        [str(VENV_BIN / "tuning-service"), "--help"],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        for option in ("--host", "--port", "--workers"):
            assert option in out.stdout
    keys = subprocess.run(
        [sys.executable, "-m", "tuning_service", "keys", "--help"], capture_output=True, text=True, timeout=60
    )
    assert keys.returncode == 0 and all(w in keys.stdout for w in ("create", "list", "revoke"))


def test_a_malformed_setting_is_a_clear_error(tmp_path: Path) -> None:
    env = service_env_vars(data_dir=tmp_path / "d", files_root=tmp_path, models_dir=tmp_path / "m")
    env["TUNING_MAX_CONCURRENT_JOBS"] = "lots"
    out = subprocess.run(
        [sys.executable, "-m", "tuning_service", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "TUNING_MAX_CONCURRENT_JOBS must be an integer" in out.stderr
    assert "Traceback" not in out.stderr


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> dict:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"not healthy: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _bare_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNING_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def test_uvicorn_import_string_with_no_setup_creates_everything_in_the_working_directory(
    tmp_path: Path,
) -> None:
    """`uvicorn tuning_service.app:app` (the seed's way) in an empty folder: no TUNING_* variables, no manual
    step. The data dir, database and service log appear under ./.tuning, and the dev keys are announced."""
    port = free_port()
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "uvicorn"), "tuning_service.app:app", "--port", str(port)],
            cwd=tmp_path,
            env=_bare_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = time.monotonic()
        health = _wait_healthy(port, proc, log)
        ready_after = time.monotonic() - started
        assert health["status"] == "healthy" and health["total_jobs"] == 0
    finally:
        _stop(proc)
    assert (tmp_path / ".tuning" / "tuning.db").is_file()
    assert (tmp_path / ".tuning" / "jobs").is_dir()
    service_log = (tmp_path / ".tuning" / "tuning_service.log").read_text()
    assert "development keys" in service_log
    assert "development keys" in log.read_text()  # stderr as well
    print(f"uvicorn start to healthy: {ready_after:.2f}s")


def test_procfile_serves_on_port(tmp_path: Path) -> None:
    lines = [ln for ln in (REPO / "Procfile").read_text().splitlines() if ln.startswith("web:")]
    assert len(lines) == 1
    command = lines[0].removeprefix("web:").strip()
    assert "$PORT" in command
    port = free_port()
    env = _bare_env()
    env.update(
        PORT=str(port), TUNING_DATA_DIR=str(tmp_path / "data"), PATH=f"{VENV_BIN}:{env.get('PATH', '')}"
    )
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        # As honcho/foreman run it: through a shell, from the repository root, with the venv on PATH.
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert _wait_healthy(port, proc, log)["status"] == "healthy"
    finally:
        _stop(proc)
    assert (tmp_path / "data" / "tuning.db").is_file()


def test_two_workers_share_one_database(light_service_env: ServiceEnv) -> None:
    svc = light_service_env.start("two-workers", workers=2, extra_env={"TUNING_MAX_CONCURRENT_JOBS": "0"})
    try:
        ids = [svc.create_job()["id"] for _ in range(8)]
        listed = [j["id"] for j in svc.get("/v1/tunings.list?limit=100").json()["data"]]
        assert listed == ids[::-1]
        # Whichever worker takes each request, every job is found and cancelled exactly once.
        for job_id in ids:
            r = svc.post(f"/v1/tunings.cancel/{job_id}")
            assert r.status == 200 and r.json()["status"] == "cancelled"
        assert all(svc.get(f"/v1/tunings.get/{i}").json()["status"] == "cancelled" for i in ids)
        assert svc.get("/health", key=None).json()["total_jobs"] == 8
    finally:
        svc.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_spec_curl_sequence_works_against_a_fresh_service(tmp_path: Path, repo_root: Path) -> None:
    """The seed's commands, unchanged apart from the port: health, create (its exact body), get, list,
    cancel -- against `python -m tuning_service` started with no configuration in a folder holding
    data/train.jsonl."""
    (tmp_path / "data").mkdir()
    shutil.copyfile(repo_root / "data" / "train.jsonl", tmp_path / "data" / "train.jsonl")
    port = free_port()
    base = f"http://localhost:{port}"
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuning_service", "--port", str(port)],
            cwd=tmp_path,
            env=_bare_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def sh(command: str) -> dict:
        out = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    try:
        _wait_healthy(port, proc, log)
        health = sh(f"curl {base}/health")
        assert health["status"] == "healthy" and {"version", "uptime", "active_jobs", "total_jobs"} <= set(
            health
        )

        job = sh(
            f"""curl -X POST {base}/v1/tunings.create \\
  -H "Authorization: Bearer test-key-001" \\
  -H "Content-Type: application/json" \\
  -d '{{
    "model": "meta-llama/Llama-2-7b-hf",
    "training_file": "data/train.jsonl",
    "hyperparameters": {{
      "epochs": 3,
      "learning_rate": 0.0002,
      "batch_size": 4
    }}
  }}'"""
        )
        assert job["status"] in ("queued", "running"), job
        assert job["model"] == "meta-llama/Llama-2-7b-hf"
        job_id = job["id"]

        got = sh(f"""curl -X GET {base}/v1/tunings.get/{job_id} \\
  -H "Authorization: Bearer test-key-001\"""")
        assert got["id"] == job_id

        listed = sh(f"""curl -X GET {base}/v1/tunings.list \\
  -H "Authorization: Bearer test-key-001\"""")
        assert [j["id"] for j in listed["data"]] == [job_id]

        cancelled = sh(f"""curl -X POST {base}/v1/tunings.cancel/{job_id} \\
  -H "Authorization: Bearer test-key-001\"""")
        if cancelled.get("object") != "tuning.job":
            # Offline, the 7B hub model can fail before the cancel lands: then the job is already terminal.
            assert cancelled["error"]["code"] == "job_terminal", cancelled
        else:
            assert cancelled["status"] in ("cancelled", "cancelling"), cancelled

        # The job settles (a launched trainer is stopped or fails) before the service goes away.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            final = sh(f'curl -s {base}/v1/tunings.get/{job_id} -H "Authorization: Bearer test-key-001"')
            if final["status"] in ("cancelled", "failed"):
                break
            time.sleep(0.2)
        assert final["status"] in ("cancelled", "failed"), final
    finally:
        _stop(proc)
    assert (tmp_path / ".tuning" / "tuning.db").is_file()

"""Run the real service (`python -m tuning_service`, i.e. uvicorn) as a subprocess on a free port.

Tests talk to it over real HTTP. Each ServiceProcess has its own data dir (SQLite file, job folders), files
root (where `training_file` paths resolve) and models dir. The server's own stdout/stderr go to
`<data_dir>/server.out` (appended across restarts) so a failing test can show it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEV_KEY = "test-key-001"
OTHER_KEY = "test-key-002"

# Small, valid chat data for API tests that never train (no model needed).
TINY_TRAIN_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": str(2 * i)},
        ]
    }
    for i in range(8)
]
# The same questions as preference pairs (OpenAI's format): for dpo/orpo/simpo jobs that never train.
TINY_PAIR_ROWS = [
    {
        "input": {"messages": row["messages"][:1]},
        "preferred_output": row["messages"][1:],
        "non_preferred_output": [{"role": "assistant", "content": str(2 * i + 1)}],
    }
    for i, row in enumerate(TINY_TRAIN_ROWS)
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_light_files_root(root: Path) -> Path:
    """A files root with hand-written data/train.jsonl, data/valid.jsonl and data/pairs.jsonl (for
    non-training tests)."""
    write_jsonl(root / "data" / "train.jsonl", TINY_TRAIN_ROWS)
    write_jsonl(root / "data" / "valid.jsonl", TINY_TRAIN_ROWS[:2])
    write_jsonl(root / "data" / "pairs.jsonl", TINY_PAIR_ROWS)
    return root


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The `error` object of an error response."""
        return dict(self.json()["error"])


class SSEStream:
    """A minimal Server-Sent Events reader over http.client. `next()` returns the next event as
    {"id", "event", "data"} (data parsed as JSON), {"comment": text} for a comment line, {"retry": ms},
    or None at the end of the stream."""

    def __init__(self, base_url: str, path: str, headers: dict[str, str], timeout: float = 30) -> None:
        import http.client
        from urllib.parse import urlsplit

        u = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}

    def next(self) -> dict[str, Any] | None:
        event: dict[str, Any] = {}
        while True:
            raw = self.response.readline()
            if not raw:
                return event or None
            line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            if line == "":
                if event:
                    return event
                continue
            if line.startswith(":"):
                return {"comment": line[1:].strip()}
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                event["data"] = json.loads(value)
            elif name == "id":
                event["id"] = int(value)
            else:
                event[name] = value

    def events(self) -> list[dict[str, Any]]:
        """Every remaining event (not comments) until the server ends the stream."""
        out = []
        while (ev := self.next()) is not None:
            if "comment" not in ev and "retry" not in ev:
                out.append(ev)
        return out

    def close(self) -> None:
        self.conn.close()


@dataclass
class ServiceProcess:
    data_dir: Path
    files_root: Path
    models_dir: Path
    env: dict[str, str]
    workers: int = 1
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_path(self) -> Path:
        return self.data_dir / "server.out"

    def output(self) -> str:
        try:
            return self.output_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "tuning_service",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        with open(self.output_path, "ab") as out:
            # Own session: stop() signals the server (and its uvicorn workers) as one group. Trainers start
            # their own sessions, so they are not in this group and survive a service stop, as in production.
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.files_root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"service exited with {self.proc.returncode} during start-up:\n{self.output()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"service did not become healthy in {timeout}s:\n{self.output()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # uvicorn workers share the group; make sure none outlives the parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def trainer_pids(self) -> list[int]:
        """Live trainer processes of this service's jobs (found by their job folder on the command line)."""
        import psutil

        marker = str(self.data_dir / "jobs")
        pids = []
        for p in psutil.process_iter(["cmdline", "status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                    marker in a for a in p.info["cmdline"] or []
                ):
                    pids.append(p.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return pids

    def shutdown(self) -> None:
        """Stop the service and kill any trainer it left running. Trainers outlive `stop()` by design (a
        restarted service re-attaches to them); at the end of a test nothing may keep burning CPU."""
        self.stop()
        for pid in self.trainer_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        # The inference worker runs in its own session; a service stopped gracefully stops it, a killed one
        # does not.
        pid = self.inference_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def inference_pid(self) -> int | None:
        """The inference worker's pid while it runs (its pid file, checked against /proc), else None."""
        try:
            pid = int((self.data_dir / "inference" / "worker.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return None
        return pid

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `python -m tuning_service ARGS` against this service's data dir (e.g. `keys create`)."""
        result = subprocess.run(
            [sys.executable, "-m", "tuning_service", *args],
            cwd=self.files_root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"tuning_service {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def new_key(self, name: str) -> str:
        """A fresh API key (a fresh owner with no jobs), created with the CLI; works at once."""
        return self.cli("keys", "create", "--name", name).stdout.strip()

    # ---- HTTP --------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = DEV_KEY,
        json_body: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Response:
        """One HTTP request; never raises on 4xx/5xx (the Response says what came back)."""
        hdrs = dict(headers or {})
        if key is not None:
            hdrs.setdefault("Authorization", f"Bearer {key}")
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base_url + path, data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as exc:
            return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())

    def stream(
        self,
        path: str,
        *,
        key: str | None = DEV_KEY,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> SSEStream:
        hdrs = dict(headers or {})
        if key is not None:
            hdrs.setdefault("Authorization", f"Bearer {key}")
        hdrs.setdefault("Accept", "text/event-stream")
        return SSEStream(self.base_url, path, hdrs, timeout=timeout)

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json_body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, json_body=json_body, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def create_job(self, key: str = DEV_KEY, **body: Any) -> dict[str, Any]:
        body.setdefault("model", "tiny-llama")
        body.setdefault("training_file", "data/train.jsonl")
        r = self.post("/v1/tunings.create", body, key=key)
        assert r.status == 200, (r.status, r.text)
        return dict(r.json())

    def wait_for(
        self, job_id: str, statuses: set[str] | str, *, key: str = DEV_KEY, timeout: float = 120
    ) -> dict:
        """Poll a job until its status is in `statuses`; fail with the server output if it never does."""
        wanted = {statuses} if isinstance(statuses, str) else set(statuses)
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            r = self.get(f"/v1/tunings.get/{job_id}", key=key)
            assert r.status == 200, (r.status, r.text)
            job = r.json()
            if job["status"] in wanted:
                return job
            if job["status"] in {"succeeded", "failed", "cancelled"}:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"job {job_id} is {job.get('status')!r}, wanted {sorted(wanted)}: {json.dumps(job)[:2000]}\n"
            f"--- server output ---\n{self.output()[-3000:]}"
        )


def service_env_vars(
    *, data_dir: Path, files_root: Path, models_dir: Path, extra_env: dict[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNING_")}
    env.update(
        TUNING_DATA_DIR=str(data_dir),
        TUNING_FILES_ROOT=str(files_root),
        TUNING_MODELS_DIR=str(models_dir),
        TUNING_LOG_LEVEL="INFO",
        TUNING_CPU_THREADS="1",  # one torch thread per trainer in tests (tests/conftest.py says why)
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    return env


def start_service(
    *,
    data_dir: Path,
    files_root: Path,
    models_dir: Path,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
) -> ServiceProcess:
    """Start `python -m tuning_service` on a free port and wait until /health answers."""
    models_dir.mkdir(parents=True, exist_ok=True)
    env = service_env_vars(
        data_dir=data_dir, files_root=files_root, models_dir=models_dir, extra_env=extra_env
    )
    svc = ServiceProcess(
        data_dir=data_dir, files_root=files_root, models_dir=models_dir, env=env, workers=workers
    )
    svc.start()
    return svc


@dataclass
class ServiceEnv:
    """Where a test service finds its files and models; `root` is scratch space for data dirs."""

    files_root: Path
    models_dir: Path
    root: Path

    def new_data_dir(self, name: str) -> Path:
        d = self.root / name
        n = 1
        while d.exists():
            n += 1
            d = self.root / f"{name}-{n}"
        return d

    def start(self, name: str = "data", **kw: Any) -> ServiceProcess:
        return start_service(
            data_dir=self.new_data_dir(name), files_root=self.files_root, models_dir=self.models_dir, **kw
        )

"""A real Ray head on loopback for the Ray executor's tests (`ray[default]`, the `ray` extra), started and
stopped by scripts/ray-local, the script users try the Ray executor with.

It runs `ray start --head --block` in a session of its own, so it is stopped by its pid (its session and its
descendants' sessions), never by `ray stop`, which would end every Ray process on the machine. Its ports are
free ports of its own, so it never meets another head on the same machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ray-local"


@dataclass
class RayHead:
    num_cpus: int = 2
    dashboard_port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ray-head-")))

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def pid(self) -> int:
        return int((self.dir / "head.pid").read_text())

    def _script(self, command: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RAY": str(Path(sys.executable).parent / "ray")}
        argv = [str(SCRIPT), command, "--dir", str(self.dir), *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)

    def start(self) -> RayHead:
        ports = [
            "--port", free_port(), "--dashboard-agent-listen-port", free_port(),
            "--dashboard-agent-grpc-port", free_port(), "--runtime-env-agent-port", free_port(),
            "--metrics-export-port", free_port(), "--node-manager-port", free_port(),
            "--object-manager-port", free_port(),
        ]  # fmt: skip
        done = self._script(
            "start", "--port", str(self.dashboard_port), "--cpus", str(self.num_cpus), "--",
            "--num-gpus", "0", "--object-store-memory", str(100 * 1024 * 1024), *map(str, ports),
        )  # fmt: skip
        if done.returncode != 0:
            self.kill()  # whatever it left running
            raise RuntimeError(f"scripts/ray-local start failed:\n{done.stdout}\n{done.stderr}")
        assert f"TUNING_RAY_ADDRESS={self.address}" in done.stdout, done.stdout
        return self

    def output(self) -> str:
        try:
            return (self.dir / "head.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """The head and every process it started, at once (SIGKILL): a lost head, for the tests."""
        if not (self.dir / "head.pid").exists():
            return
        try:
            head = psutil.Process(self.pid)
            pids = {self.pid, *(p.pid for p in head.children(recursive=True))}
        except psutil.NoSuchProcess:
            return
        for pid in pids:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self) -> None:
        done = self._script("stop")
        assert done.returncode == 0, done.stderr
        shutil.rmtree(self.dir, ignore_errors=True)

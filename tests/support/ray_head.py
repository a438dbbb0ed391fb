"""A real Ray head on loopback for the Ray executor's tests (`ray[default]`, the `ray` extra).

Started as `ray start --head --block` in its own session, so a test stops the whole head (and every job it
runs) by its process group; `ray stop` would end every Ray process on the machine. Its ports are free ports of
its own and its session files live in a short temporary folder (Ray's sockets need a short path), so it
never meets another head on the same machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import free_port


@dataclass
class RayHead:
    num_cpus: int = 2
    dashboard_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rh", dir="/tmp")))

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 90.0) -> RayHead:
        ray = Path(sys.executable).parent / "ray"
        ports = {
            "--port": free_port(),
            "--dashboard-port": self.dashboard_port,
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
        }
        cmd = [
            str(ray), "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
            "--num-cpus", str(self.num_cpus), "--num-gpus", "0",
            "--object-store-memory", str(100 * 1024 * 1024),
            "--temp-dir", str(self.temp_dir),
            *[str(x) for kv in ports.items() for x in kv],
        ]  # fmt: skip
        # Ray's own processes do not record coverage (the .pth hook would start it in each of them); without
        # the variable Ray listens on a non-loopback address (platform-facts.md).
        env = {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_START"}
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        log = open(self.temp_dir / "head.out", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:  # the job API answers once the dashboard's job module (and its agent) is up
                with urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the Ray head did not come up in {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        try:
            return (self.temp_dir / "head.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """The head and everything it started, at once (SIGKILL to its process group and to the sessions its
        processes made of their own, e.g. the job drivers)."""
        self._signal_all(signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is None:
            return
        self._signal_all(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        self._signal_all(signal.SIGKILL)
        self.proc.wait(timeout=15)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _signal_all(self, sig: int) -> None:
        """Ray's job drivers run in sessions of their own: find every process whose command line names this
        head's temp dir or that descends from the head, and signal their groups too."""
        if self.proc is None:
            return
        pids = {self.proc.pid} | _descendants(self.proc.pid)
        for pid in pids:
            try:
                os.killpg(os.getpgid(pid), sig)
            except (ProcessLookupError, PermissionError):
                pass


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out

"""The service's side of the inference worker (`python -m tuning_trainer.serve`): start it on demand, speak
its protocol (tuning_trainer/serve/protocol.py: one Unix-socket connection per request), notice its death.

One worker per data folder, shared by every service process: a process that finds no live socket takes a
file lock, looks again, and only then starts one (in its own session, with a GPU lease when the policy
asks). A request whose connection ends before its last event was served by a worker that died: it fails
with 503 `engine_crashed`, and the next request starts a new worker. Closing a request's connection cancels
its generation in the worker. The service's shutdown stops the worker it can find (the pid file).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from .. import procs
from ..errors import APIError
from ..settings import Settings
from ..storage.store import Store

log = logging.getLogger("tuning_service.inference")

# The worker, as a command (tests may swap it).
COMMAND = (sys.executable, "-m", "tuning_trainer.serve")
HOLDER = "inference"
STARTUP_SECONDS = 60.0
RETRY_AFTER_SECONDS = 5
# A Unix socket path is limited to 108 bytes (sun_path); a longer data folder gets one under /tmp.
MAX_SOCKET_PATH = 100
LOG_TAIL_LINES = 10


def socket_path(settings: Settings) -> Path:
    path = settings.inference_dir / "worker.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    # A folder of this user's own, mode 0700: nobody else can listen at a predictable path under /tmp.
    digest = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tuning-{os.getuid()}-{digest}" / "worker.sock"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise APIError(503, "engine_unavailable", f"{path} must belong to this user with mode 0700")


class InferenceWorker:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.dir = settings.inference_dir
        self.socket = socket_path(settings)
        self.pid_file = self.dir / "worker.pid"
        self.log_file = self.dir / "worker.log"
        self._starting: asyncio.Future[None] | None = None
        self._waiting = 0
        self.started_here = 0

    # ---- requests ----------------------------------------------------------------------------------------

    async def generate(self, request: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The worker's events for one generation, up to `done` or `error`. Leaving the iteration early
        (a client that hung up) closes the connection, which cancels the generation."""
        if self._waiting >= self.settings.inference_max_waiting:
            raise APIError(
                503,
                "engine_overloaded",
                f"{self._waiting} generation requests are already waiting; try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._waiting += 1
        try:
            for attempt in (1, 2):
                reader, writer = await self._connect()
                got_any = False
                try:
                    while True:
                        try:
                            raw = await self._exchange(reader, writer, None if got_any else request)
                        except OSError:  # reset by a worker that died (EOF is the other way to say it)
                            raw = b""
                        if not raw:
                            break
                        got_any = True
                        event = json.loads(raw)
                        yield event
                        if event["type"] in ("done", "error"):
                            return
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
                # Nothing was served: a worker that was dying (or died idle) took the connection. Once it is
                # gone, a new one gets the request; a worker that dies during a request is a 503.
                if got_any or attempt == 2:
                    raise self._crashed()
                await self._wait_gone()
        finally:
            self._waiting -= 1

    async def _wait_gone(self, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while self.pid() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    @staticmethod
    async def _exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any] | None
    ) -> bytes:
        """Send the request (the first time), then read the next event line."""
        if request is not None:
            writer.write(json.dumps({"op": "generate", **request}).encode() + b"\n")
            await writer.drain()
        return await reader.readline()

    async def call(self, op: dict[str, Any], *, start: bool = False) -> dict[str, Any] | None:
        """A one-line exchange (`stats`, `evict`); None when no worker runs (and `start` is false)."""
        try:
            if start:
                reader, writer = await self._connect()
            else:  # never starts one (a scrape or a delete while none runs)
                reader, writer = await asyncio.open_unix_connection(str(self.socket))
        except (APIError, OSError):
            return None
        try:
            writer.write(json.dumps(op).encode() + b"\n")
            await writer.drain()
            raw = await asyncio.wait_for(reader.readline(), 10.0)
            return dict(json.loads(raw)) if raw else None
        except (OSError, ValueError, asyncio.TimeoutError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _crashed(self) -> APIError:
        # The worker's output stays in the service log: it is shared by every key's requests.
        log.error(
            "the inference worker stopped during a request; its last output: %s", " | ".join(self.log_tail())
        )
        return APIError(
            503,
            "engine_crashed",
            "the inference worker stopped during this request; it restarts on the next request",
            headers={"Retry-After": "1"},
        )

    # ---- the process -------------------------------------------------------------------------------------

    async def _reachable(self) -> bool:
        try:
            _, writer = await asyncio.open_unix_connection(str(self.socket))
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(self.socket), limit=2**24)
        except OSError:
            pass
        # One start at a time in this process, and never abandoned half-way: a request cancelled while it
        # waits (its client hung up) must not leave a launched worker untracked or the file lock held.
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._start_once())
            self._starting.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.shield(self._starting)
        try:
            return await asyncio.open_unix_connection(str(self.socket), limit=2**24)
        except OSError as exc:
            raise APIError(
                503, "engine_unavailable", f"the inference worker cannot be reached: {exc}"
            ) from None

    async def _start_once(self) -> None:
        lock_fd = await asyncio.to_thread(self._lock)
        try:
            if not await self._reachable():
                await self._start()
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _lock(self) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "worker.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    async def _start(self) -> None:
        """Start a worker (the caller holds the start lock and found none) and wait for its socket."""
        if self.socket.parent != self.dir:  # the fallback under /tmp (a long data folder)
            _private_dir(self.socket.parent)
        old = self.pid()
        if old is not None:  # alive but not answering (hung, or still exiting): it goes first
            log.warning("inference worker %d is not answering; stopping it", old)
            await self._stop_pid(old, grace_seconds=2.0)
        await release_dead_leases(self.store)
        env = dict(os.environ)
        env["TUNING_MODELS_DIR"] = str(self.settings.models_dir)
        env["PYTHONUNBUFFERED"] = "1"
        gpu = await self._gpu()
        env["CUDA_VISIBLE_DEVICES"] = gpu or ""
        if not gpu:
            env["TUNING_INFERENCE_THREADS"] = str(self.settings.cpu_threads or (os.cpu_count() or 1))
        cmd = [
            *COMMAND,
            "--socket",
            str(self.socket),
            "--engine",
            self.settings.inference_engine,
            "--max-adapters",
            str(self.settings.inference_max_adapters),
            "--idle-seconds",
            str(self.settings.inference_idle_seconds),
        ]
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # a dead worker's: nobody answers on it (checked under the lock)
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stopped whole, never by a terminal's ^C
            )
        self.pid_file.write_text(f"{proc.pid} {procs.start_time(proc.pid)}\n")
        if gpu is not None and self.settings.inference_gpu == "lease":  # the lease now names its process
            await self.store.lease_free_gpu(
                gpus=[gpu],
                holder=HOLDER,
                pid=proc.pid,
                proc_start_time=procs.start_time(proc.pid),
                now=time.time(),
            )
        self.started_here += 1
        log.info(
            "inference worker %d started (%s engine, gpu %s)",
            proc.pid,
            self.settings.inference_engine,
            gpu or "none",
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if await self._reachable():
                return
            if proc.poll() is not None:
                tail = " | ".join(self.log_tail())
                raise APIError(
                    503,
                    "engine_unavailable",
                    f"the inference worker exited with code {proc.returncode} at start-up: {tail[-500:]}",
                )
            await asyncio.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise APIError(
            503, "engine_unavailable", f"the inference worker did not start in {STARTUP_SECONDS:g} s"
        )

    async def _gpu(self) -> str | None:
        """The GPU the worker runs on: none on a CPU service, the first one when sharing, else a lease."""
        gpus = self.settings.gpus
        if not gpus:
            return None
        if self.settings.inference_gpu == "share":
            return gpus[0]
        gpu = await self.store.lease_free_gpu(
            gpus=gpus, holder=HOLDER, pid=None, proc_start_time=None, now=time.time()
        )
        if gpu is None:
            raise APIError(
                503,
                "no_gpu_available",
                "every GPU is leased to a training job and TUNING_INFERENCE_GPU=lease; retry when one ends "
                "(or set TUNING_INFERENCE_GPU=share)",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS * 6)},
            )
        return gpu

    def pid(self) -> int | None:
        try:
            pid_text, started = self.pid_file.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return pid if procs.is_alive(pid, int(started) if started.isdigit() else None) else None

    def log_tail(self) -> list[str]:
        try:
            lines = self.log_file.read_bytes()[-8192:].decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        return [ln for ln in lines if ln.strip()][-LOG_TAIL_LINES:]

    async def stop(self) -> None:
        """Stop the worker (the service is shutting down): SIGTERM to its group, SIGKILL if it lingers."""
        pid = self.pid()
        if pid is not None:
            await self._stop_pid(pid, grace_seconds=5.0)
        await release_dead_leases(self.store)  # its lease, and only a dead process's

    async def _stop_pid(self, pid: int, *, grace_seconds: float) -> None:
        procs.signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while self.pid() == pid and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.pid() == pid:
            procs.signal_group(pid, signal.SIGKILL)
            await self._wait_gone()


async def release_dead_leases(store: Store) -> None:
    """Release GPU leases whose holder is gone (an inference worker that exited when idle, or crashed), so
    that queued jobs may have the GPU. The scheduler calls this each tick."""
    for lease in await store.gpu_leases():
        if lease["pid"] is None:
            stale = time.time() - float(lease["since"]) > STARTUP_SECONDS * 2
        else:
            stale = not procs.is_alive(int(lease["pid"]), lease["proc_start_time"])
        if stale and await store.release_gpu_lease(lease["gpu"], pid=lease["pid"]):
            log.info("GPU %s released by %s (process %s gone)", lease["gpu"], lease["holder"], lease["pid"])

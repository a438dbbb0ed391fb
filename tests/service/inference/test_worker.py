"""The service's side of the inference worker, with a fake worker process speaking the protocol: started
on demand and once, a worker that dies mid-request (503 `engine_crashed`, then a new worker), one that fails
at start-up (503 `engine_unavailable` with its output), the waiting limit, and the GPU policy (a lease of
its own, none when sharing, 503 `no_gpu_available` when every GPU trains)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import make_settings, run
from tuning_service import procs
from tuning_service.errors import APIError
from tuning_service.inference import worker as worker_mod
from tuning_service.inference.worker import InferenceWorker, release_dead_leases, socket_path
from tuning_service.storage.store import Store

FAKE = Path(__file__).with_name("fake_worker.py")
REQUEST = {
    "base": {"location": "m", "quantize": False},
    "adapter": None,
    "kind": "chat",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
    "echo": False,
    "logprobs": None,
    "sampling": {},
}


@pytest.fixture(autouse=True)
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_mod, "COMMAND", (sys.executable, str(FAKE)))
    monkeypatch.setenv("FAKE_WORKER_MODE", "ok")


async def _setup(tmp_path: Path, **settings: Any) -> tuple[InferenceWorker, Store]:
    s = make_settings(tmp_path, **settings)
    s.ensure_dirs()
    store = Store(s.db_path)
    await store.open()
    return InferenceWorker(s, store), store


async def _events(worker: InferenceWorker) -> list[dict[str, Any]]:
    return [e async for e in worker.generate(REQUEST)]


def test_the_worker_starts_on_demand_once_and_serves_requests(tmp_path: Path) -> None:
    async def body() -> None:
        worker, store = await _setup(tmp_path)
        try:
            assert await worker.call({"op": "stats"}) is None  # nothing started by a stats call
            first = await _events(worker)
            assert [e["type"] for e in first] == ["start", "delta", "delta", "finish", "done"]
            pid = worker.pid()
            assert pid is not None
            await _events(worker)
            assert worker.pid() == pid and worker.started_here == 1
            assert (await worker.call({"op": "stats"}) or {})["pid"] == pid
        finally:
            await worker.stop()
            await store.close()
        assert worker.pid() is None

    run(body())


def test_a_worker_dying_mid_request_is_503_engine_crashed_and_the_next_request_starts_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        worker, store = await _setup(tmp_path)
        try:
            monkeypatch.setenv("FAKE_WORKER_MODE", "crash")
            seen: list[dict[str, Any]] = []
            with pytest.raises(APIError) as err:
                async for e in worker.generate(REQUEST):
                    seen.append(e)
            assert (err.value.status_code, err.value.code) == (503, "engine_crashed")
            assert [e["type"] for e in seen] == ["start", "delta"]
            monkeypatch.setenv("FAKE_WORKER_MODE", "ok")
            assert (await _events(worker))[-1]["type"] == "done"
            assert worker.started_here == 2
        finally:
            await worker.stop()
            await store.close()

    run(body())


def test_a_worker_that_cannot_start_is_503_engine_unavailable_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_WORKER_MODE", "exit")

    async def body() -> None:
        worker, store = await _setup(tmp_path)
        try:
            with pytest.raises(APIError) as err:
                await _events(worker)
            assert (err.value.status_code, err.value.code) == (503, "engine_unavailable")
            assert "exited with code 3" in err.value.message and "out of memory" in err.value.message
        finally:
            await store.close()

    run(body())


def test_requests_beyond_the_waiting_limit_get_503_with_retry_after(tmp_path: Path) -> None:
    async def body() -> None:
        worker, store = await _setup(tmp_path, inference_max_waiting=1)
        try:
            held = worker.generate(REQUEST)
            assert (await held.__anext__())["type"] == "start"  # one request in flight
            with pytest.raises(APIError) as err:
                await _events(worker)
            assert (err.value.status_code, err.value.code) == (503, "engine_overloaded")
            assert err.value.headers["Retry-After"]
            await held.aclose()
            assert (await _events(worker))[-1]["type"] == "done"
        finally:
            await worker.stop()
            await store.close()

    run(body())


def test_the_worker_leases_a_gpu_of_its_own_and_a_dead_workers_lease_is_released(tmp_path: Path) -> None:
    async def body() -> None:
        worker, store = await _setup(tmp_path, gpus=["0", "1"])
        try:
            await _events(worker)
            stats = await worker.call({"op": "stats"}) or {}
            assert stats["gpu"] == "0"
            leases = await store.gpu_leases()
            assert [(x["gpu"], x["holder"], x["pid"]) for x in leases] == [("0", "inference", worker.pid())]
            await release_dead_leases(store)
            assert len(await store.gpu_leases()) == 1  # alive: kept
            os.kill(stats["pid"], signal.SIGKILL)
            for _ in range(100):
                if worker.pid() is None:
                    break
                time.sleep(0.02)
            await release_dead_leases(store)
            assert await store.gpu_leases() == []
        finally:
            await worker.stop()
            await store.close()

    run(body())


def test_with_every_gpu_training_a_leasing_worker_gets_503_no_gpu_available(tmp_path: Path) -> None:
    async def body() -> None:
        worker, store = await _setup(tmp_path, gpus=["0"])
        try:
            assert await store.lease_free_gpu(
                gpus=["0"],
                holder="other",
                pid=os.getpid(),
                proc_start_time=procs.start_time(os.getpid()),
                now=0.0,
            )
            with pytest.raises(APIError) as err:
                await _events(worker)
            assert (err.value.status_code, err.value.code) == (503, "no_gpu_available")
        finally:
            await worker.stop()  # (none should have started)
            await store.close()

    run(body())


def test_a_sharing_worker_runs_on_the_first_gpu_without_a_lease(tmp_path: Path) -> None:
    async def body() -> None:
        worker, store = await _setup(tmp_path, gpus=["3", "4"], inference_gpu="share")
        try:
            await _events(worker)
            assert (await worker.call({"op": "stats"}) or {})["gpu"] == "3"
            assert await store.gpu_leases() == []
        finally:
            await worker.stop()
            await store.close()

    run(body())


def test_a_long_data_folder_gets_a_socket_path_that_fits(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    path = socket_path(make_settings(deep))
    assert len(str(path)) <= worker_mod.MAX_SOCKET_PATH and str(path).startswith("/tmp/")
    assert socket_path(make_settings(deep)) == path


def test_a_request_cancelled_while_the_worker_starts_leaves_one_tracked_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import psutil

    monkeypatch.setenv("FAKE_WORKER_MODE", "slow")

    async def body() -> None:
        worker, store = await _setup(tmp_path)
        try:
            hung_up = asyncio.ensure_future(_events(worker))
            await asyncio.sleep(0.2)  # the worker is launched, its socket not there yet
            hung_up.cancel()
            assert (await _events(worker))[-1]["type"] == "done"
            fakes = [p for p in psutil.process_iter(["cmdline"])
                     if str(worker.socket) in " ".join(p.info["cmdline"] or [])]  # fmt: skip
            assert [p.pid for p in fakes] == [worker.pid()] and worker.started_here == 1
            assert (tmp_path / "data" / "inference" / "worker.lock").exists()
            # The file lock was released: a second manager of the same folder starts nothing, it connects.
            other = InferenceWorker(worker.settings, store)
            assert (await _events(other))[-1]["type"] == "done" and other.started_here == 0
        finally:
            await worker.stop()
            await store.close()

    run(body())

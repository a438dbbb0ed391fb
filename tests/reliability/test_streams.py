"""Log streams under stress (issue 5, points 13 and 14), against a real service whose trainer is
tests/reliability/stream_trainer.py (1,000 records, every 10th written in two pieces, one malformed line).

13: a client reads 300 metrics records, disconnects, resumes with Last-Event-ID and gets exactly the rest;
    no half line is ever sent; the malformed line does not end the stream.
14: 100 clients that vanish abruptly (TCP reset) and one that never reads: the server's open files and
    threads return to their baseline and its memory stays bounded; SIGTERM with streams open: the service
    exits within its graceful-shutdown timeout (5 s) and the trainer keeps running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.server import DEV_KEY, ServiceEnv, ServiceProcess

STREAM_TRAINER = Path(__file__).with_name("stream_trainer.py")
RECORDS = 1000


@pytest.fixture(scope="module")
def svc(light_service_env: ServiceEnv) -> Iterator[ServiceProcess]:
    s = light_service_env.start(
        "streams",
        extra_env={
            "TUNING_TRAINER_COMMAND": json.dumps([sys.executable, str(STREAM_TRAINER)]),
            "TUNING_MAX_CONCURRENT_JOBS": "2",
            "TUNING_RATE_LIMIT_RPS": "0",
            "TUNING_CANCEL_GRACE_SECONDS": "2",
        },
    )
    yield s
    s.shutdown()


def _job(svc: ServiceProcess, n: int, delay: float) -> str:
    return str(svc.create_job(model=f"stream:{n}?delay={delay}", training_file="data/train.jsonl")["id"])


def _events(stream) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    while (ev := stream.next()) is not None:
        if "id" in ev:
            yield ev


def test_resume_after_300_records_gets_exactly_the_rest(svc: ServiceProcess) -> None:
    job_id = _job(svc, RECORDS, 0.003)
    path = f"/v1/tunings.logs/{job_id}?follow=true"
    first = svc.stream(path, timeout=60)
    seen: list[dict] = []
    for ev in _events(first):
        seen.append(ev)
        if ev["event"] == "metrics" and ev["data"]["step"] == 300:
            break
    first.close()  # disconnect mid-stream, while the trainer is still writing
    last_id = seen[-1]["id"]
    assert [e["id"] for e in seen] == list(range(1, last_id + 1))

    rest_stream = svc.stream(path, headers={"Last-Event-ID": str(last_id)}, timeout=60)
    try:
        rest = list(_events(rest_stream))
    finally:
        rest_stream.close()
    assert [e["id"] for e in rest] == list(range(last_id + 1, last_id + 1 + len(rest)))  # nothing twice
    steps = [e["data"]["step"] for e in rest if e["event"] == "metrics"]
    assert steps == list(range(301, RECORDS + 1))
    # Every record arrived whole: the lines written in two pieces became one record each, once.
    all_metrics = [e["data"] for e in seen + rest if e["event"] == "metrics"]
    assert [m["step"] for m in all_metrics] == list(range(1, RECORDS + 1))
    assert all(m["loss"] == pytest.approx(1.0 / m["step"]) for m in all_metrics)
    # The malformed line became a service log record and the stream went on to the end.
    skipped = [e for e in seen + rest if e["event"] == "log" and "skipped" in e["data"]["line"]]
    assert len(skipped) == 1
    assert rest[-1]["event"] == "status" and rest[-1]["data"]["status"] == "succeeded"


def _server(svc: ServiceProcess) -> psutil.Process:
    assert svc.proc is not None
    return psutil.Process(svc.proc.pid)


def _raw_follow(svc: ServiceProcess, job_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    sock.sendall(
        f"GET /v1/tunings.logs/{job_id}?follow=true HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {DEV_KEY}\r\n\r\n".encode()
    )
    return sock


def _settle(proc: psutil.Process, baseline: int, slack: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        fds = proc.num_fds()
        if fds <= baseline + slack or time.monotonic() > deadline:
            return fds
        time.sleep(0.1)


def test_abrupt_disconnects_and_a_client_that_never_reads(svc: ServiceProcess) -> None:
    job_id = _job(svc, 20_000, 0.0005)  # ~4 MB of records while the clients come and go
    server = _server(svc)
    for _ in range(3):  # warm-up: connection handling, thread pool
        svc.get(f"/v1/tunings.logs/{job_id}?limit=10")
    base_fds, base_threads, base_rss = server.num_fds(), server.num_threads(), server.memory_info().rss
    never_reads = _raw_follow(svc, job_id)
    never_reads.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for _ in range(100):
        sock = _raw_follow(svc, job_id)
        sock.recv(2048)  # the stream has started
        # SO_LINGER 0: close() sends a TCP reset, the most abrupt way a client can vanish.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    fds = _settle(server, base_fds, slack=2)  # the never-reading client's socket (+1 for a log file)
    threads, rss = server.num_threads(), server.memory_info().rss
    print(f"fds {base_fds}->{fds}, threads {base_threads}->{threads}, rss {base_rss >> 20}->{rss >> 20} MiB")
    assert fds <= base_fds + 2
    assert threads <= base_threads + 2
    assert rss - base_rss < 64 << 20
    # The service still answers, and the slow client did not stall anyone.
    t0 = time.monotonic()
    assert svc.get("/health", key=None).status == 200
    assert svc.get(f"/v1/tunings.get/{job_id}").status == 200
    assert time.monotonic() - t0 < 2
    never_reads.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    never_reads.close()
    svc.post(f"/v1/tunings.cancel/{job_id}")
    svc.wait_for(job_id, {"cancelled", "succeeded"}, timeout=30)
    assert _settle(server, base_fds, slack=0) <= base_fds


def test_sigterm_with_open_streams_exits_in_time_and_trainers_keep_running(
    light_service_env: ServiceEnv,
) -> None:
    s = light_service_env.start(
        "streams-sigterm",
        extra_env={"TUNING_TRAINER_COMMAND": json.dumps([sys.executable, str(STREAM_TRAINER)])},
    )
    try:
        job_id = _job(s, 100_000, 0.01)  # ~17 minutes: it is still running when the service stops
        s.wait_for(job_id, "running", timeout=30)
        streams = [s.stream(f"/v1/tunings.logs/{job_id}?follow=true", timeout=30) for _ in range(10)]
        for st in streams:
            assert st.next() is not None
        trainers = s.trainer_pids()
        assert trainers
        assert s.proc is not None
        t0 = time.monotonic()
        os.killpg(s.proc.pid, signal.SIGTERM)
        s.proc.wait(timeout=15)
        took = time.monotonic() - t0
        print(f"service exited {took:.2f} s after SIGTERM with 10 open streams")
        assert took < 5 + 2  # graceful-shutdown timeout 5 s, plus start-up of the shutdown itself
        assert all(
            psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in trainers
        )
        for st in streams:
            st.close()
    finally:
        s.shutdown()
        for pid in s.trainer_pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)

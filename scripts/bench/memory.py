#!/usr/bin/env python3
"""B7: memory of the service process holding 50 live log streams and 10 running jobs, vs the idle service.

    python scripts/bench/memory.py [--jobs 10] [--streams 50] [--hold 5] [--json PATH] [--quick]

The 10 "running jobs" run the fake trainer (tests/service/fake_trainer.py via TUNING_TRAINER_COMMAND: the
trainer's JSON-lines protocol, a metrics record every 0.1 s, no ML), so the memory measured is the service's
own (job rows, tailing, SQLite, streams), not a model's; trainers are separate processes anyway and are not
counted. Idle = the same service after start-up and one short job run to the end with its log streamed (so
every code path is imported and warm). Loaded = --jobs jobs running (TUNING_MAX_CONCURRENT_JOBS = --jobs)
and --streams SSE streams (spread over the jobs) being read by this process, held --hold seconds; the figure
is the highest RSS sampled during the hold. Target: loaded - idle <= 50 MB.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any

import psutil
from _common import DEV_KEY, Row, bench_service, finish, parser


class Stream(threading.Thread):
    """One SSE reader (a raw HTTP/1.1 connection) counting the events it receives."""

    def __init__(self, port: int, job_id: str) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.job_id = job_id
        self.events = 0
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self.conn.request(
                "GET",
                f"/v1/tunings.logs/{self.job_id}?follow=true",
                headers={"Authorization": f"Bearer {DEV_KEY}", "Accept": "text/event-stream"},
            )
            resp = self.conn.getresponse()
            if resp.status != 200:
                self.error = f"HTTP {resp.status}"
                return
            while not self.stop.is_set():
                line = resp.readline()
                if not line:
                    return
                if line.startswith(b"id:"):
                    self.events += 1
        except Exception as exc:  # closing the socket from another thread ends the read any which way
            if not self.stop.is_set():
                self.error = repr(exc)

    def close(self) -> None:
        self.stop.set()
        try:
            if self.conn.sock is not None:
                self.conn.sock.shutdown(2)
        except OSError:
            pass
        self.conn.close()


def rss_mb(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / 2**20


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=10)
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--hold", type=float, default=5.0)
    args = p.parse_args()
    if args.quick:
        args.jobs, args.streams, args.hold = 2, 4, 1.0

    svc = bench_service(
        "memory",
        fake_trainer=True,
        extra_env={"TUNING_MAX_CONCURRENT_JOBS": str(args.jobs), "TUNING_CANCEL_GRACE_SECONDS": "5"},
    )
    streams: list[Stream] = []
    samples: list[float] = []
    try:
        assert svc.proc is not None
        proc = psutil.Process(svc.proc.pid)
        port = int(svc.base_url.rsplit(":", 1)[1])
        # Warm-up: one short job, its log streamed to the end, a get and a list.
        warm = svc.create_job(model="fake:complete?steps=5&delay=0.01")
        svc.wait_for(warm["id"], "succeeded", timeout=60)
        s = svc.stream(f"/v1/tunings.logs/{warm['id']}?follow=true")
        s.events()
        svc.get(f"/v1/tunings.get/{warm['id']}")
        svc.get("/v1/tunings.list?limit=100")
        time.sleep(1.0)
        idle = rss_mb(proc)

        jobs = [svc.create_job(model="fake:complete?steps=1000000&delay=0.1")["id"] for _ in range(args.jobs)]
        for job_id in jobs:
            svc.wait_for(job_id, "running", timeout=60)
        for i in range(args.streams):
            st = Stream(port, jobs[i % len(jobs)])
            st.start()
            streams.append(st)
        time.sleep(1.0)  # every stream connected and caught up
        deadline = time.monotonic() + args.hold
        while time.monotonic() < deadline:
            samples.append(rss_mb(proc))
            time.sleep(0.25)
        children_alive = sum(1 for j in jobs if svc.get(f"/v1/tunings.get/{j}").json()["status"] == "running")
        errors = [st.error for st in streams if st.error]
        events = [st.events for st in streams]
        if errors:
            raise SystemExit(f"streams failed: {errors[:3]}")
        if min(events) == 0:
            raise SystemExit("a stream received nothing")
        for job_id in jobs:
            svc.post(f"/v1/tunings.cancel/{job_id}")
    finally:
        for st in streams:
            st.close()
        for st in streams:
            st.join(5)
        svc.shutdown()

    loaded = max(samples)
    rows = [
        Row(
            "B7",
            f"service RSS, {args.streams} streams + {args.jobs} running jobs",
            loaded - idle,
            "MB over idle",
            None,
            "-",
            "<=",
            50,
            compare="value",
            extra={"idle_rss_mb": round(idle, 1), "loaded_rss_mb": round(loaded, 1)},
        )
    ]
    details: dict[str, Any] = {
        "idle_rss_mb": round(idle, 1),
        "loaded_rss_mb_max": round(loaded, 1),
        "samples_mb": [round(x, 1) for x in samples],
        "jobs_running_at_end": children_alive,
        "streams": args.streams,
        "events_per_stream": {"min": min(events), "max": max(events)},
        "trainer": "fake trainer (tests/service/fake_trainer.py), metrics every 0.1 s",
    }
    finish("memory", rows, args, details)
    print(f"# idle {idle:.1f} MB, loaded (max) {loaded:.1f} MB")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""B1 and B2: API throughput and list latency through uvicorn, against a bare Starlette app.

    python scripts/bench/api.py [--jobs 10000] [--concurrency 32] [--duration 5] [--rounds 3]
        [--engine auto|wrk|python] [--json PATH] [--quick]

B1: `GET /v1/tunings.get/{id}` requests/s at concurrency 32, vs a bare Starlette route returning the same
    JSON dict on the same uvicorn settings (bare_app.py), both started by this invocation. Target >= 0.7.
    The HTTP stack is uvicorn's default choice for this interpreter (httptools + uvloop when installed, else
    h11 + asyncio), the same for both servers; the table's footer and the JSON say which.
B2: `GET /v1/tunings.list?limit=100` p50 latency with `--jobs` jobs in the database, vs B1's p50 on the same
    database and concurrency. Target <= 2x.
Both are also measured with the database busy ("busy" rows): another connection commits every
--busy-commit-ms (default 20 ms, about what a running job's metrics records cost), so the caches that serve
an unchanged database without a query (service/tuning_service/jobcache.py) miss and every request takes the
stamp path. The idle rows are a quiet service polled by clients; the busy rows, one with jobs training.
The database is seeded with copies of one real job (created through the API, run to `succeeded` by the fake
trainer), so every listed job has real metrics, hyperparameters and timestamps. The load generator
(loadgen.py: wrk when installed, else asyncio) is a separate process; runs are interleaved (bare, get, list)
over --rounds rounds and the median of each is used. The per-key rate limit is off for the benchmark.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from _common import DEV_KEY, Row, bench_service, finish, median, parser
from tests.support.server import free_port

BENCH = Path(__file__).resolve().parent


def seed_jobs(db: Path, template_id: str, n: int) -> None:
    """Clone the template job (a real, finished one) n-1 times straight into SQLite, newest last."""
    con = sqlite3.connect(db, timeout=30)
    try:
        con.row_factory = sqlite3.Row
        row = dict(con.execute("SELECT * FROM jobs WHERE id = ?", (template_id,)).fetchone())
        cols = [c for c in row if c != "ord"]
        placeholders = ", ".join("?" for _ in cols)
        sql = f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({placeholders})"
        base = float(row["created_at"]) - n
        batch = []
        for i in range(n - 1):
            r = dict(row)
            r["id"] = "ftjob-" + hashlib.sha256(f"bench-{i}".encode()).hexdigest()[:24]
            r["idempotency_key"] = None
            r["created_at"] = base + i
            batch.append(tuple(r[c] for c in cols))
        with con:
            con.executemany(sql, batch)
    finally:
        con.close()


class Committer:
    """Commits one row every `every_s` through its own connection, like a running job's records: SQLite's
    data_version moves for the service on every commit. A table of its own; the service never reads it."""

    def __init__(self, db: Path, every_s: float) -> None:
        self.db, self.every_s = db, every_s
        self.commits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        con = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        try:
            con.execute("CREATE TABLE IF NOT EXISTS bench_ticks (n INTEGER)")
            while not self._stop.wait(self.every_s):
                con.execute("INSERT INTO bench_ticks VALUES (?)", (self.commits,))
                self.commits += 1
        finally:
            con.close()

    def __enter__(self) -> Committer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def loadgen(url: str, args: Any, server_pid: int) -> dict[str, Any]:
    """One loadgen run against `url`; also the server's CPU time per request (less noisy than req/s on a
    shared machine: it counts the work done, not the time waited for a core)."""
    cmd = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        url,
        "--concurrency",
        str(args.concurrency),
        "--duration",
        str(args.duration),
        "--engine",
        args.engine,
        "--header",
        f"Authorization: Bearer {DEV_KEY}",
    ]
    cpu0 = cpu_seconds(server_pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120)
    cpu = cpu_seconds(server_pid) - cpu0
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"] or result["non_2xx"]:
        raise SystemExit(f"loadgen saw errors against {url}: {result}")
    result["server_cpu_ms_per_request"] = round(1000 * cpu / max(1, result["requests"]), 4)
    return result


def http_stack() -> dict[str, str]:
    """What uvicorn's defaults (`--http auto --loop auto`, used by `python -m tuning_service` and by the bare
    app alike) resolve to with this interpreter: httptools and uvloop when they are installed, else h11 and
    asyncio. Both servers are started from the same interpreter and environment, so both get the same."""
    import importlib.metadata
    import importlib.util

    def found(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    return {
        "uvicorn": importlib.metadata.version("uvicorn"),
        "http": "httptools" if found("httptools") else "h11",
        "loop": "uvloop" if found("uvloop") else "asyncio",
    }


def start_bare(body_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**__import__("os").environ, "BENCH_BARE_BODY": str(body_file)}
    # The same uvicorn settings as `python -m tuning_service` (see tuning_service/__main__.py: serve).
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bare_app:app",
        "--app-dir",
        str(BENCH),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "info",
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "5",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/v1/tunings.get/x", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("bare app did not start")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engine", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--busy-commit-ms", type=float, default=20.0, help="commit interval of the busy runs")
    args = p.parse_args()
    if args.quick:
        args.jobs, args.duration, args.rounds, args.concurrency = 200, 1.0, 1, 8

    svc = bench_service("api", fake_trainer=True)
    bare = None
    try:
        job = svc.create_job(model="fake:complete?steps=5&delay=0.01")
        svc.wait_for(job["id"], "succeeded", timeout=60)
        seed_jobs(svc.data_dir / "tuning.db", job["id"], args.jobs)
        body = svc.get(f"/v1/tunings.get/{job['id']}")
        assert body.status == 200, body.text
        body_file = Path(tempfile.mkdtemp(prefix="bench-bare-")) / "job.json"
        body_file.write_bytes(body.body)
        listed = svc.get("/v1/tunings.list?limit=100").json()
        assert len(listed["data"]) == min(100, args.jobs) and listed["has_more"] == (args.jobs > 100)
        bare, bare_url = start_bare(body_file)
        assert svc.proc is not None
        svc_pid = svc.proc.pid

        get_url = f"{svc.base_url}/v1/tunings.get/{job['id']}"
        list_url = f"{svc.base_url}/v1/tunings.list?limit=100"
        kinds = ("bare", "get", "list", "get_busy", "list_busy")
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        commits = 0
        # Warm every path once (imports, caches), unmeasured.
        for url in (f"{bare_url}/v1/tunings.get/{job['id']}", get_url, list_url):
            urllib.request.urlopen(
                urllib.request.Request(url, headers={"Authorization": f"Bearer {DEV_KEY}"}), timeout=30
            ).read()
        for _ in range(args.rounds):
            runs["bare"].append(loadgen(f"{bare_url}/v1/tunings.get/{job['id']}", args, bare.pid))
            runs["get"].append(loadgen(get_url, args, svc_pid))
            runs["list"].append(loadgen(list_url, args, svc_pid))
            with Committer(svc.data_dir / "tuning.db", args.busy_commit_ms / 1000) as committer:
                runs["get_busy"].append(loadgen(get_url, args, svc_pid))
                runs["list_busy"].append(loadgen(list_url, args, svc_pid))
            commits += committer.commits
        rss_mb = round(psutil.Process(svc_pid).memory_info().rss / 2**20, 1)
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(10)
        svc.shutdown()

    def med(kind: str, *path: str) -> float:
        values = []
        for run in runs[kind]:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(value)
        return median(values)

    bare_rps = med("bare", "rps")
    busy = f"busy database (a commit every {args.busy_commit_ms:g} ms)"
    cpu = {k: med(k, "server_cpu_ms_per_request") for k in runs}
    rows = []
    for suffix, get, lst, what in (("", "get", "list", ""), ("b", "get_busy", "list_busy", f", {busy}")):
        rows += [
            Row(
                f"B1{suffix}",
                f"GET tunings.get req/s, concurrency {args.concurrency}{what}",
                med(get, "rps"),
                "req/s",
                bare_rps,
                "bare Starlette route, same uvicorn settings",
                ">=",
                0.7,
            ),
            Row(
                f"B2{suffix}",
                f"GET tunings.list?limit=100 p50, {args.jobs} jobs{what}",
                med(lst, "latency_ms", "p50"),
                "ms",
                med(get, "latency_ms", "p50"),
                f"B1{suffix} (tunings.get) p50, same database and concurrency",
                "<=",
                2.0,
            ),
        ]
    details = {
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "engine": runs["get"][0]["engine"],
        "http_stack": http_stack(),
        "runs": runs,
        "list_rps": med("list", "rps"),
        "busy_commit_ms": args.busy_commit_ms,
        "busy_commits": commits,
        "service_rss_mb_after": rss_mb,
        "server_cpu_ms_per_request": cpu,
        "cpu_ratio_get_vs_bare": round(cpu["get"] / cpu["bare"], 3) if cpu["bare"] else None,
    }
    finish("api", rows, args, details)
    stack = details["http_stack"]
    print(
        f"# both servers: uvicorn {stack['uvicorn']}, http={stack['http']}, loop={stack['loop']} (uvicorn's "
        f"auto choice), 1 worker, no uvicorn access log; load generator: {details['engine']}"
    )
    print(
        "# server CPU ms/request (median): "
        + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items())
        + f"; get/bare {details['cpu_ratio_get_vs_bare']}"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""HTTP load generator for the benchmarks: N keep-alive connections hammering one GET URL on loopback,
bounded by a duration and a request count. Runs as its own process; prints one JSON object.

    python scripts/bench/loadgen.py URL [--concurrency 32] [--duration 5] [--max-requests 200000]
        [--header 'Authorization: Bearer KEY'] [--engine auto|wrk|python] [--warmup 1]

Engines: `wrk` (Debian's package; C, one thread) when installed, else a small asyncio client over raw
sockets (HTTP/1.1 keep-alive, Content-Length bodies). `auto` picks wrk if it is on PATH. Output:
{"engine", "requests", "errors", "non_2xx", "duration_s", "rps", "latency_ms": {"mean", "p50", "p90", "p99"}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

# wrk: print our JSON at the end (latency in microseconds in wrk's own histogram).
WRK_LUA = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, '
    .. '"mean_us": %f, "p50_us": %d, "p90_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, errors, summary.errors.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def run_wrk(url: str, concurrency: int, duration: float, headers: list[str]) -> dict[str, object]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
        script = f.name
    try:
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
        cmd += ["-s", script]
        for h in headers:
            cmd += ["-H", h]
        out = subprocess.run(
            [*cmd, url], capture_output=True, text=True, timeout=duration + 60, check=True
        ).stdout
    finally:
        os.unlink(script)
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if m is None:
        raise SystemExit(f"wrk printed no result:\n{out}")
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    return {
        "engine": "wrk",
        "requests": d["requests"],
        "errors": d["errors"],
        "non_2xx": d["non_2xx"],
        "duration_s": round(secs, 3),
        "rps": round(d["requests"] / secs, 1),
        "latency_ms": {
            "mean": round(d["mean_us"] / 1000, 3),
            "p50": round(d["p50_us"] / 1000, 3),
            "p90": round(d["p90_us"] / 1000, 3),
            "p99": round(d["p99_us"] / 1000, 3),
        },
    }


async def _worker(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    budget: list[int],
    lat: list[float],
    stats: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            if m is None:
                raise RuntimeError("response without Content-Length")
            await reader.readexactly(int(m.group(1)))
            lat.append(time.perf_counter() - t0)
            if not 200 <= status < 300:
                stats["non_2xx"] += 1
    except (OSError, asyncio.IncompleteReadError, RuntimeError):
        stats["errors"] += 1
    finally:
        writer.close()


async def run_python(
    url: str, concurrency: int, duration: float, max_requests: int, headers: list[str]
) -> dict[str, object]:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    path = u.path + (f"?{u.query}" if u.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *headers, "", ""]
    request = "\r\n".join(lines).encode()
    lat: list[float] = []
    stats = {"errors": 0, "non_2xx": 0}
    budget = [max_requests]
    t0 = time.monotonic()
    await asyncio.gather(
        *(_worker(host, port, request, t0 + duration, budget, lat, stats) for _ in range(concurrency))
    )
    secs = time.monotonic() - t0
    lat.sort()
    return {
        "engine": "python",
        "requests": len(lat),
        "errors": stats["errors"],
        "non_2xx": stats["non_2xx"],
        "duration_s": round(secs, 3),
        "rps": round(len(lat) / secs, 1),
        "latency_ms": {
            "mean": round(1000 * sum(lat) / max(1, len(lat)), 3),
            "p50": round(1000 * _pct(lat, 50), 3),
            "p90": round(1000 * _pct(lat, 90), 3),
            "p99": round(1000 * _pct(lat, 99), 3),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=200_000, help="python engine only")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--engine", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of unmeasured load first")
    args = p.parse_args()
    host = urlsplit(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loadgen only targets loopback")
    engine = args.engine
    if engine == "auto":
        engine = "wrk" if shutil.which("wrk") else "python"
    if engine == "wrk":
        if args.warmup > 0:
            run_wrk(args.url, args.concurrency, args.warmup, args.header)
        result = run_wrk(args.url, args.concurrency, args.duration, args.header)
    else:
        if args.warmup > 0:
            asyncio.run(run_python(args.url, args.concurrency, args.warmup, args.max_requests, args.header))
        result = asyncio.run(
            run_python(args.url, args.concurrency, args.duration, args.max_requests, args.header)
        )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""B4: latency from a record written to a job's events.jsonl to its arrival in `client.tunings.stream_logs`.

    python scripts/bench/stream_latency.py [--records 300] [--interval 0.02] [--json PATH] [--quick]

A real service runs a job whose trainer is the fake trainer (tests/service/fake_trainer.py, the trainer's
JSON-lines protocol without the ML): it writes a `metrics` record every --interval seconds, each stamped with
the wall-clock time just before it is written (and fsynced). This process follows the job with the SDK's
`stream_logs` and, for every metrics record, takes arrival time - record time (same machine, same clock).
Records written before the stream was connected (a replay, not live) are left out. Targets: p50 <= 100 ms,
p99 <= 250 ms. The path measured: trainer write -> service tail (TUNING_POLL_INTERVAL, 50 ms) -> SQLite
commit -> wake-up of the stream -> SSE -> urllib3 -> SSE parser -> the iterator.
"""

from __future__ import annotations

import time

from _common import DEV_KEY, Row, bench_service, finish, median, parser, percentile

from tuning_sdk import TuningClient


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--records", type=int, default=300)
    p.add_argument("--interval", type=float, default=0.02)
    args = p.parse_args()
    if args.quick:
        args.records = 30

    svc = bench_service("stream", fake_trainer=True)
    lat_ms: list[float] = []
    replayed = 0
    try:
        client = TuningClient(api_key=DEV_KEY, base_url=svc.base_url)
        job = client.tunings.create(
            model=f"fake:complete?steps={args.records}&delay={args.interval}",
            training_file="data/train.jsonl",
        )
        connected_at: float | None = None
        for rec in client.tunings.stream_logs(job.id):
            now = time.time()
            if connected_at is None:
                connected_at = now  # the first record arrives right after the stream is connected
            if rec.type != "metrics" or rec.time is None:
                continue
            if rec.time < connected_at:
                replayed += 1
                continue
            lat_ms.append(1000 * (now - rec.time))
        final = client.tunings.get(job.id)
        assert final.status == "succeeded", final.status
    finally:
        svc.shutdown()

    if not lat_ms:
        raise SystemExit("no live records measured")
    p50, p99 = percentile(lat_ms, 50), percentile(lat_ms, 99)
    rows = [
        Row("B4", "record -> stream_logs latency p50", p50, "ms", None, "-", "<=", 100, compare="value"),
        Row("B4", "record -> stream_logs latency p99", p99, "ms", None, "-", "<=", 250, compare="value"),
    ]
    details = {
        "records_measured": len(lat_ms),
        "records_replayed_skipped": replayed,
        "interval_s": args.interval,
        "latency_ms": {
            "min": round(min(lat_ms), 2),
            "p50": round(p50, 2),
            "p90": round(percentile(lat_ms, 90), 2),
            "p99": round(p99, 2),
            "max": round(max(lat_ms), 2),
            "mean": round(sum(lat_ms) / len(lat_ms), 2),
            "median": round(median(lat_ms), 2),
        },
    }
    finish("stream_latency", rows, args, details)


if __name__ == "__main__":
    main()

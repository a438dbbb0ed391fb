"""Prometheus metrics: what `/metrics` serves (routes_metrics.py), docs/service.md "Metrics" lists them.

Two kinds of series:

- Job-level series (jobs by status, queue, running jobs, GPU leases, per-running-job loss and tokens/s, the
  job duration histogram) are read from the database at scrape time by `JobCollector`: every worker shares
  the database, so every worker gives the same answer. The queries are an indexed GROUP BY over
  `jobs(status)`, the active jobs (bounded by the concurrency limit) and the few rows of `job_durations`
  (filled by `record_job_duration` in the transaction that makes a job terminal): no scan of job rows
  (1-2 ms per scrape with 10,000 jobs).
- Per-process series (HTTP requests and latencies, open log streams) are counted in plain dicts by
  `record_request`, about 4x cheaper than prometheus-client's `Counter.labels().inc()` plus
  `Histogram.observe()` (and its multiprocess mode is ~4x slower again; the request benchmark B1 counts
  every microsecond). With `--workers N` each worker writes a snapshot of its counters to
  `<data_dir>/metrics/` once a second (`Snapshots`), and the worker that answers a scrape adds up the
  snapshots of its sibling workers (dead siblings included, so counters never go backwards while the service
  runs; open streams only of live ones). A restart of the service starts new counters, as a restart of a
  single process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import time
from bisect import bisect_left
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import procs
from ..settings import Settings
from ..states import ACTIVE_VALUES, STATUS_VALUES
from ..storage.db import Tx
from ..storage.metrics import add_job_duration
from ..storage.store import Store
from ..storage.usage import LIMITS

log = logging.getLogger("tuning_service.metrics")

# Request latency buckets (seconds) and job duration buckets (seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_DURATION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
UNMATCHED_ROUTE = "unmatched"  # 404s: never the raw path (unbounded label values)
SNAPSHOT_SECONDS = 1.0

# ---- per-process request counters ----------------------------------------------------------------------

# (route template, method) -> ([latency bucket counts..., +Inf, sum], {status code: requests}): one tuple
# built and one dict lookup per request.
_stats: dict[tuple[str, str], tuple[list[float], dict[int, int]]] = {}
_open_streams = 0
_version = 0  # bumped on every change: a snapshot is written only when something moved


def stream_started(message: MutableMapping[str, Any]) -> bool:
    """On `http.response.start`: True (and one more open stream) if the response is an event stream."""
    global _open_streams, _version
    for name, value in message.get("headers", ()):
        if name == b"content-type":
            if value.startswith(b"text/event-stream"):
                _open_streams += 1
                _version += 1
                return True
            return False
    return False


def record_request(scope: MutableMapping[str, Any], status: int | None, seconds: float, stream: bool) -> None:
    """Count one finished request. A stream's lifetime is not a latency: streams are counted, not timed."""
    global _open_streams, _version
    # Starlette's router leaves the matched route in the scope (the dict the middleware holds): its path is
    # the template. No route (404): one `unmatched` series, never the raw path.
    key = (getattr(scope.get("route"), "path", UNMATCHED_ROUTE), scope.get("method", ""))
    entry = _stats.get(key)
    if entry is None:
        entry = _stats[key] = ([0.0] * (len(LATENCY_BUCKETS) + 2), {})
    counts = entry[1]
    code = status or 0
    counts[code] = counts.get(code, 0) + 1
    _version += 1
    if stream:
        _open_streams -= 1
        return
    hist = entry[0]
    hist[bisect_left(LATENCY_BUCKETS, seconds)] += 1
    hist[-1] += seconds


def snapshot() -> dict[str, Any]:
    return {
        "requests": [[*k, str(code), n] for k, (_, counts) in _stats.items() for code, n in counts.items()],
        "latency": [[*k, hist] for k, (hist, _) in _stats.items() if any(hist)],
        "open_streams": _open_streams,
    }


def reset() -> None:
    """Forget this process's counters (tests)."""
    global _open_streams, _version
    _stats.clear()
    _open_streams = 0
    _version += 1


# ---- worker snapshots (--workers N) ------------------------------------------------------------------------


def _identity(pid: int) -> str:
    return f"{pid}-{procs.start_time(pid) or 0}"


class Snapshots:
    """This worker's counters in `<dir>/<service>.<worker>.json`, where <service> names the uvicorn
    supervisor process (pid + start time): files of an earlier run of the service are ignored (and removed).
    In a single-process service nothing is written or read."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        parent = multiprocessing.parent_process()
        self.multi = parent is not None and parent.pid is not None
        self.service = _identity(parent.pid) if parent is not None and parent.pid else _identity(os.getpid())
        self.me = _identity(os.getpid())
        self._written = -1
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return self.dir / f"{self.service}.{self.me}.json"

    def start(self) -> None:
        if not self.multi:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        self._task = asyncio.create_task(self._loop(), name="tuning-metrics-snapshots")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.write()  # the last counts stay in the service's totals

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            try:
                self.write()
            except OSError as exc:
                log.warning("cannot write the metrics snapshot %s: %s", self.path, exc)

    def write(self) -> None:
        if not self.multi or self._written == _version:
            return
        version = _version
        data = {"pid": os.getpid(), "start": procs.start_time(os.getpid()), **snapshot()}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.path)
        self._written = version

    def _remove_stale(self) -> None:
        # Snapshots of an earlier run of the service (its supervisor is gone): their counters ended with it.
        for path in self.dir.glob("*.json"):
            service = path.name.split(".", 1)[0]
            pid, _, start = service.partition("-")
            stale = service != self.service and pid.isdigit() and start.isdigit()
            if stale and not procs.is_alive(int(pid), int(start)):
                with contextlib.suppress(OSError):
                    path.unlink()

    def siblings(self) -> list[dict[str, Any]]:
        """The latest snapshots of the other workers of this service run."""
        if not self.multi:
            return []
        out = []
        for path in self.dir.glob(f"{self.service}.*.json"):
            if path == self.path:
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # being replaced, or gone
            if isinstance(data, dict):
                out.append(data)
        return out


class ProcessCollector(Collector):
    """HTTP requests, latencies and open streams: this process plus its sibling workers' snapshots."""

    def __init__(self, snapshots: Snapshots | None) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        requests: dict[tuple[str, ...], float] = {}
        latency: dict[tuple[str, ...], list[float]] = {}
        streams = 0.0
        sources = [snapshot()]
        if self.snapshots is not None:
            for data in self.snapshots.siblings():
                sources.append(data)
                if not procs.is_alive(int(data.get("pid") or 0), data.get("start")):
                    data["open_streams"] = 0  # a dead worker's streams closed with it
        for src in sources:
            for *labels, value in src.get("requests", ()):
                key = tuple(str(v) for v in labels)
                requests[key] = requests.get(key, 0) + value
            for *labels, values in src.get("latency", ()):
                key = tuple(str(v) for v in labels)
                acc = latency.setdefault(key, [0.0] * (len(LATENCY_BUCKETS) + 2))
                for i, v in enumerate(values[: len(acc)]):
                    acc[i] += v
            streams += max(0, int(src.get("open_streams") or 0))
        c = CounterMetricFamily(
            "tuning_http_requests",
            "HTTP requests answered, by route template, method and status code",
            labels=["route", "method", "status"],
        )
        for key, value in sorted(requests.items()):
            c.add_metric(list(key), value)
        yield c
        h = HistogramMetricFamily(
            "tuning_http_request_duration_seconds",
            "Time to answer an HTTP request (streams excluded), by route template and method",
            labels=["route", "method"],
        )
        for key, values in sorted(latency.items()):
            h.add_metric(list(key), _cumulative(LATENCY_BUCKETS, values[:-1]), values[-1])
        yield h
        yield GaugeMetricFamily("tuning_sse_streams_open", "Log streams (SSE) open now", value=streams)


def _cumulative(bounds: tuple[float, ...], counts: Sequence[float]) -> list[tuple[str, float]]:
    out, total = [], 0.0
    for bound, n in zip((*bounds, float("inf")), counts, strict=False):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


# ---- job-level series, from the database ---------------------------------------------------------------


async def record_job_duration(tx: Tx, row: dict[str, Any]) -> None:
    """In the transaction that made `row` terminal: add its run time to the duration histogram (jobs that
    never started have none)."""
    started, finished = row.get("started_at"), row.get("finished_at")
    if started is None or finished is None:
        return
    seconds = max(0.0, float(finished) - float(started))
    bucket = bisect_left(JOB_DURATION_BUCKETS, seconds)
    await add_job_duration(tx, row["status"], bucket, seconds, len(JOB_DURATION_BUCKETS) + 1)


class JobCollector(Collector):
    """Job-level series read from the shared database at scrape time (storage/metrics.py: indexed and
    bounded reads on the read-only connection, well under a millisecond)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def _keys(self) -> Iterator[Metric]:
        """Per API key: jobs, GPU hours in the quota window, limits (storage/usage.py)."""
        now = time.time()
        window = self.settings.quota_window_days
        rows = self.store.usage_by_key(now=now, since=now - window * 86400)
        labels = ["key_id", "key_name"]
        jobs = GaugeMetricFamily(
            "tuning_key_jobs", "Jobs of each API key holding a slot (running) or waiting (queued)",
            labels=[*labels, "state"],
        )  # fmt: skip
        hours = GaugeMetricFamily(
            "tuning_key_gpu_hours",
            f"GPU hours of each API key over the quota window (TUNING_QUOTA_WINDOW_DAYS = {window:g})",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "tuning_key_limit", "Each API key's limits (absent: none)", labels=[*labels, "limit"]
        )
        for r in rows:
            key = [str(r["id"]), str(r["name"])]
            jobs.add_metric([*key, "running"], int(r["running"]))
            jobs.add_metric([*key, "queued"], int(r["queued"]))
            hours.add_metric(key, float(r["gpu_seconds"]) / 3600)
            for name in LIMITS:
                if r[name] is not None:
                    limit.add_metric([*key, name], float(r[name]))
        yield jobs
        yield hours
        yield limit

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(STATUS_VALUES, 0)
        counts.update(self.store.job_status_counts())
        g = GaugeMetricFamily("tuning_jobs", "Jobs in the database, by status", labels=["status"])
        for status, n in counts.items():
            g.add_metric([status], n)
        yield g
        yield GaugeMetricFamily(
            "tuning_queue_length", "Jobs queued, waiting for a slot", value=counts["queued"]
        )
        rows = self.store.active_job_figures(ACTIVE_VALUES)
        yield GaugeMetricFamily(
            "tuning_jobs_running",
            "Jobs holding a slot (running, or stopping: cancelling/pausing)",
            value=len(rows),
        )
        yield GaugeMetricFamily(
            "tuning_max_concurrent_jobs",
            "TUNING_MAX_CONCURRENT_JOBS",
            value=self.settings.max_concurrent_jobs,
        )
        leased = sum(r[1] for r in rows)
        yield GaugeMetricFamily("tuning_gpu_leases_in_use", "GPUs leased to running jobs", value=leased)
        yield GaugeMetricFamily("tuning_gpus", "GPUs configured (TUNING_GPUS)", value=len(self.settings.gpus))
        loss = GaugeMetricFamily(
            "tuning_job_train_loss", "Latest train loss of each running job", labels=["job_id"]
        )
        tps = GaugeMetricFamily(
            "tuning_job_tokens_per_second",
            "Latest training throughput of each running job",
            labels=["job_id"],
        )
        for job_id, _gpus, train_loss, tokens_per_second in rows:
            if isinstance(train_loss, (int, float)):
                loss.add_metric([job_id], float(train_loss))
            if isinstance(tokens_per_second, (int, float)):
                tps.add_metric([job_id], float(tokens_per_second))
        yield loss
        yield tps
        yield from self._keys()
        hooks = dict.fromkeys(("pending", "delivered", "failed"), 0)
        hooks.update(self.store.delivery_status_counts())
        w = GaugeMetricFamily(
            "tuning_webhook_deliveries",
            "Webhook events in the outbox by status (finished ones are kept 7 days)",
            labels=["status"],
        )
        for status, n in hooks.items():
            w.add_metric([status], n)
        yield w
        h = HistogramMetricFamily(
            "tuning_job_duration_seconds",
            "Run time (started to finished) of jobs that ended, by final status",
            labels=["status"],
        )
        for status, buckets, total in self.store.job_durations():
            h.add_metric([status], _cumulative(JOB_DURATION_BUCKETS, buckets), total)
        yield h


# ---- the inference worker --------------------------------------------------------------------------------

# Counters of the worker's engine (tuning_trainer/serve/engine.py Stats): series name -> (stats key, help).
INFERENCE_COUNTERS = {
    "tuning_inference_requests": ("requests", "Generation requests the inference worker has taken"),
    "tuning_inference_requests_cancelled": ("cancelled", "Generations stopped because the client hung up"),
    "tuning_inference_requests_failed": ("failed", "Generation requests that ended in an error"),
    "tuning_inference_prompt_tokens": ("prompt_tokens", "Prompt tokens processed"),
    "tuning_inference_completion_tokens": ("completion_tokens", "Tokens generated"),
    "tuning_inference_model_loads": ("model_loads", "Base models loaded"),
    "tuning_inference_adapter_loads": ("adapter_loads", "Fine-tune adapters loaded onto a base"),
    "tuning_inference_adapter_switches": ("adapter_switches", "Requests that changed the active adapter"),
    "tuning_inference_adapter_evictions": ("adapter_evictions", "Adapters dropped (least recently used, or "
                                           "their model deleted)"),
}  # fmt: skip


class InferenceCollector(Collector):
    """The inference worker's counters as of this scrape (the running worker's: they start at 0 with each
    worker, as a process's counters do), and whether one runs."""

    def __init__(self, stats: dict[str, Any] | None) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats or {}
        yield GaugeMetricFamily(
            "tuning_inference_worker_up", "1 while an inference worker runs", value=1.0 if stats else 0.0
        )
        for name, (key, text) in INFERENCE_COUNTERS.items():
            yield CounterMetricFamily(name, text, value=float(stats.get(key) or 0))
        yield GaugeMetricFamily(
            "tuning_inference_models_loaded",
            "Base models in memory",
            value=float(len(stats.get("loaded") or ())),
        )

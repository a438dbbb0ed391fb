#!/usr/bin/env python3
"""B3 and B6: what the service adds to a job's wall time, and how fast an idle scheduler starts a job.

    python scripts/bench/job_overhead.py [--rounds 5] [--steps 20] [--starts 10] [--model DIR]
        [--json PATH] [--quick] [--skip-b3]

B3: wall time of a tiny-model LoRA job through the API, from `client.tunings.create` to `client.tunings.wait`
    returning `succeeded` (the SDK follows the job's event stream), vs the very same trainer command run
    directly: the `accelerate launch ... -m tuning_trainer --config` command line the service builds
    (tuning_service.engine.supervisor.launcher_prefix), the same config.json (only output_dir differs), the
    same environment and working directory. API and direct runs alternate (--rounds each, the order flipped
    every round); medians are compared. Target <= 1.05x. Without --model the tiny model is built first
    (tuning_trainer.tiny).
B6: create -> `running` with an idle scheduler, --starts times, each after the previous job finished, with the
    fake trainer (tests/service/fake_trainer.py) so that a start is only the service's work plus a process
    spawn. Measured: (a) create -> `running` as a client sees it (polling tunings.get every 5 ms), target
    <= 200 ms; (b) create -> the trainer's first record (its `started` line, i.e. the process is up and
    running our code) minus the same fake-trainer command spawned directly (Popen -> its first record), i.e.
    the service's part of getting a trainer going, target <= 200 ms. The direct spawn time is reported too.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    DEV_KEY,
    FAKE_TRAINER,
    ROOT,
    Row,
    bench_service,
    finish,
    median,
    parser,
    percentile,
)
from tests.support.server import start_service

from tuning_sdk import TuningClient


def build_tiny(out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "tuning_trainer.tiny", "--out", str(out), "--quiet"],
        check=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


# ---- B3 ----------------------------------------------------------------------------------------------------


def direct_run(svc: Any, config_file: Path, out_dir: Path) -> float:
    """Run the service's trainer command for `config_file` (re-pointed at out_dir) directly; wall seconds."""
    from tuning_service.engine.supervisor import launcher_prefix, trainer_env
    from tuning_service.settings import Settings

    cfg = json.loads(config_file.read_text())
    cfg["output_dir"] = str(out_dir)
    out_dir.mkdir(parents=True)
    cfg_path = out_dir / "config.json"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(svc.env)  # the service's own settings -> the same command, threads and environment
    try:
        settings = Settings()
        cmd = [*launcher_prefix(settings, 0), "--config", str(cfg_path)]
        env = trainer_env(settings, [])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    t0 = time.perf_counter()
    with open(out_dir / "output.log", "ab") as log:
        rc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=svc.files_root, env=env
        ).returncode
    wall = time.perf_counter() - t0
    last = (out_dir / "events.jsonl").read_text().splitlines()[-1]
    if rc != 0 or json.loads(last)["type"] != "completed":
        raise SystemExit(f"direct trainer run failed (exit {rc}); see {out_dir}/output.log")
    return wall


def api_run(client: TuningClient, hp: dict[str, Any]) -> tuple[float, str, dict[str, float]]:
    """create -> wait (succeeded); wall seconds, job id, and the job's server-side milestones."""
    t0 = time.perf_counter()
    job = client.tunings.create(
        model="tiny-llama", training_file="data/train.jsonl", method="lora", hyperparameters=hp
    )
    done = client.tunings.wait(job.id, timeout=600)
    wall = time.perf_counter() - t0
    if done.status != "succeeded":
        raise SystemExit(f"job {job.id} ended {done.status}: {done.error}")
    marks: dict[str, float] = {}
    for rec in client.tunings.stream_logs(job.id, follow=False):
        key = f"status:{rec.get('status')}" if rec.type == "status" else rec.type
        if rec.time is not None and key not in marks:
            marks[key] = rec.time
    return wall, job.id, marks


def bench_b3(args: Any, work: Path) -> tuple[list[Row], dict[str, Any]]:
    models = work / "models"
    if args.model:
        models.mkdir(parents=True)
        (models / "tiny-llama").symlink_to(Path(args.model).resolve())
    else:
        build_tiny(models / "tiny-llama")
    svc = start_service(data_dir=work / "data", files_root=ROOT, models_dir=models)
    hp = {"max_steps": args.steps, "batch_size": 4, "max_seq_length": 128, "logging_steps": 1}
    api_s: list[float] = []
    direct_s: list[float] = []
    milestones: list[dict[str, float]] = []
    try:
        client = TuningClient(api_key=DEV_KEY, base_url=svc.base_url)
        # One unmeasured API run first: its config.json is what the direct runs use, and it warms the caches.
        _, first_id, _ = api_run(client, hp)
        config_file = svc.data_dir / "jobs" / first_id / "config.json"
        for i in range(args.rounds):
            # Alternate the order (direct, API, API, direct, ...) so that a drift in the machine's load
            # does not always favour the same side.
            for side in ("direct", "api") if i % 2 == 0 else ("api", "direct"):
                if side == "direct":
                    direct_s.append(direct_run(svc, config_file, work / f"direct-{i}"))
                else:
                    wall, _, marks = api_run(client, hp)
                    api_s.append(wall)
                    milestones.append(marks)
    finally:
        svc.shutdown()
    api_med, direct_med = median(api_s), median(direct_s)
    row = Row(
        "B3",
        f"tiny-model job create -> succeeded ({args.steps} LoRA steps)",
        api_med,
        "s",
        direct_med,
        "the same trainer command run directly",
        "<=",
        1.05,
    )
    phases = []
    for m in milestones:
        t0 = m.get("status:queued")
        phases.append(
            {
                k: round(v - t0, 3)
                for k, v in m.items()
                if t0 is not None and k in ("status:running", "started", "completed", "status:succeeded")
            }
        )
    return [row], {
        "api_s": [round(x, 3) for x in api_s],
        "direct_s": [round(x, 3) for x in direct_s],
        "overhead_s": round(api_med - direct_med, 3),
        "api_phases_s_after_queued": phases,
        "hyperparameters": hp,
    }


# ---- B6 ----------------------------------------------------------------------------------------------------


def first_record_time(events: Path, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = events.read_text().split("\n", 1)[0]
            if line:
                return float(json.loads(line)["time"])
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    raise SystemExit(f"no record in {events}")


def direct_spawn(work: Path, i: int) -> float:
    """Popen of the fake trainer -> its first record, in seconds (the process-spawn floor)."""
    out = work / f"spawn-{i}"
    out.mkdir(parents=True)
    cfg = {"model": "fake:complete?steps=1&delay=0.01", "output_dir": str(out), "hyperparameters": {}}
    (out / "config.json").write_text(json.dumps(cfg))
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_TRAINER), "--config", str(out / "config.json")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = first_record_time(out / "events.jsonl")
    proc.wait(30)
    return started - t0


def bench_b6(args: Any, work: Path) -> tuple[list[Row], dict[str, Any]]:
    svc = bench_service("b6", fake_trainer=True)
    to_running: list[float] = []
    to_started: list[float] = []
    spawn: list[float] = []
    try:
        host, port = svc.base_url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"}
        body = json.dumps({"model": "fake:complete?steps=1&delay=0.01", "training_file": "data/train.jsonl"})
        for i in range(args.starts + 1):  # the first start is a warm-up
            spawn_s = direct_spawn(work, i)
            time.sleep(0.3)  # the scheduler is idle: nothing queued, nothing running
            t0 = time.time()
            conn.request("POST", "/v1/tunings.create", body=body, headers=headers)
            resp = conn.getresponse()
            job = json.loads(resp.read())
            assert resp.status == 200, job
            while True:
                conn.request("GET", f"/v1/tunings.get/{job['id']}", headers=headers)
                r = conn.getresponse()
                status = json.loads(r.read())["status"]
                if status != "queued":
                    break
                time.sleep(0.005)
            running_at = time.time()
            started = first_record_time(svc.data_dir / "jobs" / job["id"] / "events.jsonl")
            svc.wait_for(job["id"], {"succeeded"}, timeout=60)
            if i == 0:
                continue
            to_running.append(running_at - t0)
            to_started.append(started - t0)
            spawn.append(spawn_s)
        conn.close()
    finally:
        svc.shutdown()
    ms = 1000
    run_p50, started_p50, spawn_p50 = median(to_running), median(to_started), median(spawn)
    rows = [
        Row(
            "B6",
            "create -> running, idle scheduler (client-observed) p50",
            ms * run_p50,
            "ms",
            None,
            "-",
            "<=",
            200,
            compare="value",
        ),
        Row(
            "B6",
            "create -> trainer's first record, minus direct spawn, p50",
            ms * (started_p50 - spawn_p50),
            "ms",
            None,
            "-",
            "<=",
            200,
            compare="value",
            extra={
                "create_to_first_record_ms": round(ms * started_p50, 1),
                "spawn_ms": round(ms * spawn_p50, 1),
            },
        ),
    ]
    return rows, {
        "starts": args.starts,
        "create_to_running_ms": {
            "p50": round(ms * run_p50, 1),
            "max": round(ms * max(to_running), 1),
            "p90": round(ms * percentile(to_running, 90), 1),
        },
        "create_to_first_record_ms": {
            "p50": round(ms * started_p50, 1),
            "max": round(ms * max(to_started), 1),
        },
        "direct_spawn_to_first_record_ms": {
            "p50": round(ms * spawn_p50, 1),
            "max": round(ms * max(spawn), 1),
        },
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=5, help="B3: API runs and direct runs (each)")
    p.add_argument("--steps", type=int, default=20, help="B3: LoRA steps per job")
    p.add_argument("--starts", type=int, default=10, help="B6: job starts measured")
    p.add_argument("--model", help="B3: tiny model directory (default: build one)")
    p.add_argument("--skip-b3", action="store_true", help="only B6 (no training)")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps, args.starts = 1, 3, 2
    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    rows: list[Row] = []
    details: dict[str, Any] = {}
    try:
        if not args.skip_b3:
            r3, d3 = bench_b3(args, work / "b3")
            rows += r3
            details["B3"] = d3
        r6, d6 = bench_b6(args, work / "b6")
        rows += r6
        details["B6"] = d6
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finish("job_overhead", rows, args, details)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Trainer benchmark: time to first step, steps/s, tokens/s and peak memory for one job configuration.

    python scripts/bench/trainer.py [--model DIR] [--method qlora|lora] [--steps 60] [--batch-size 4]
        [--max-seq-length 1024] [--training-file data/train.jsonl] [--launcher accelerate|python]
        [--baseline | --compare-packing] [--json PATH]

Runs the real trainer as a subprocess (through `accelerate launch` by default, as the service does) and reads
its events.jsonl. With --baseline, the same job also runs through a plain HF `Trainer` + peft (hf_baseline.py)
in this same invocation, and the table shows trainer/baseline ratios. Without --model it builds the tiny
model first. Steady-state numbers skip the first step (warm-up). Prints a table; --json writes the numbers.
With --compare-packing it runs our trainer twice instead, without and with sequence packing, on data that
should have rows shorter than --max-seq-length (random_llama.py --variable-rows).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tuning_trainer.launch import cpu_launch_flags

ROOT = Path(__file__).resolve().parents[2]
CPU_FLAGS = cpu_launch_flags(min(os.cpu_count() or 1, 8))


def write_json(args: Any, command: str, rows: Any, ratio: Any, **extra: Any) -> None:
    """The run's settings and results to --json, when given."""
    if not args.json:
        return
    data = {"command": command, "method": args.method, "steps": args.steps, "batch_size": args.batch_size}
    data.update(extra)
    data.update({"results": rows, "ratio": ratio})
    Path(args.json).write_text(json.dumps(data, indent=2))


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "trainer"), str(ROOT), e.get("PYTHONPATH")]))
    return e


def has_cuda(python: str) -> bool:
    probe = subprocess.run(
        [python, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        env=env(),
    )
    return probe.stdout.strip() == "True"


def summarise(
    start: float, step_times: list[float], step_tokens: list[int], peak_mb: float
) -> dict[str, Any]:
    """Steady-state rates from per-step end times, skipping the first step (compilation, caches, warm-up)."""
    if len(step_times) < 3:
        raise SystemExit("need at least 3 steps to measure")
    span = step_times[-1] - step_times[0]
    return {
        "time_to_first_step_s": round(step_times[0] - start, 3),
        "steps": len(step_times),
        "steps_per_s": round((len(step_times) - 1) / span, 3),
        "tokens_per_s": round(sum(step_tokens[1:]) / span, 1),
        "median_step_ms": round(
            1000 * statistics.median(b - a for a, b in itertools.pairwise(step_times)), 2
        ),
        "peak_memory_mb": round(peak_mb, 1),
    }


def run_trainer(job: dict[str, Any], launcher: str, python: str, cuda: bool) -> dict[str, Any]:
    out = Path(job["output_dir"])
    job_file = out.parent / "job.json"
    job_file.write_text(json.dumps(job))
    if launcher == "accelerate":
        flags = [] if cuda else CPU_FLAGS
        cmd = [
            python,
            "-m",
            "accelerate.commands.launch",
            *flags,
            "-m",
            "tuning_trainer",
            "--config",
            str(job_file),
        ]
    else:
        cmd = [python, "-m", "tuning_trainer", "--config", str(job_file)]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    records = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    if proc.returncode != 0 or records[-1]["type"] != "completed":
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"trainer failed (exit {proc.returncode})")
    metrics = [r for r in records if r["type"] == "metrics"]
    seen = [0] + [m["tokens_seen"] for m in metrics]
    tokens = [b - a for a, b in itertools.pairwise(seen)]
    result = summarise(start, [m["time"] for m in metrics], tokens, max(m["peak_memory_mb"] for m in metrics))
    started = next(r for r in records if r["type"] == "started")
    result["device"] = started["device"]
    result["trainable_params"] = started["trainable_params"]
    return result


def run_baseline(job: dict[str, Any], python: str) -> dict[str, Any]:
    settings = Path(job["output_dir"]).parent / "baseline.json"
    settings.write_text(json.dumps({"job": job, "output_dir": str(Path(job["output_dir"]).parent / "hf")}))
    start = time.time()
    proc = subprocess.run(
        [python, str(ROOT / "scripts" / "bench" / "hf_baseline.py"), str(settings)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"baseline failed (exit {proc.returncode})")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return summarise(start, data["step_times"], data["step_tokens"], data["peak_memory_mb"])


def table(rows: dict[str, dict[str, Any]], ratio: dict[str, float] | None) -> str:
    keys = ["time_to_first_step_s", "steps_per_s", "tokens_per_s", "median_step_ms", "peak_memory_mb"]
    names = list(rows)
    width = max(len(k) for k in keys) + 2
    lines = [
        "metric".ljust(width) + "".join(n.rjust(14) for n in names) + ("ratio".rjust(10) if ratio else "")
    ]
    for k in keys:
        line = k.ljust(width) + "".join(f"{rows[n][k]:>14}" for n in names)
        if ratio:
            line += f"{ratio[k]:>10.2f}"
        lines.append(line)
    return "\n".join(lines)


def compare_packing(args: argparse.Namespace, job: dict[str, Any], work: Path, cuda: bool) -> None:
    """Our trainer twice on the same data: padded batches (packing off, the default) and packed rows of
    exactly max_seq_length tokens. tokens/s counts real (non-pad) tokens, so it shows what packing buys on
    data shorter than max_seq_length; it must raise the tokens per step, or packing did nothing (exit 1)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, packing in (("no_packing", False), ("packing", True)):
        (work / name).mkdir(parents=True, exist_ok=True)
        hp = {**job["hyperparameters"], "packing": packing}
        run = {**job, "hyperparameters": hp, "output_dir": str(work / name / "out")}
        rows[name] = run_trainer(run, args.launcher, args.python, cuda)
    off, on = rows["no_packing"], rows["packing"]
    ratio = {k: on[k] / off[k] if off[k] else float("nan") for k in off if isinstance(off[k], (int, float))}
    per_step = {n: r["tokens_per_s"] / r["steps_per_s"] for n, r in rows.items()}
    command = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"# {command}")
    print(
        f"# sequence packing: method={args.method} steps={args.steps} batch={args.batch_size} "
        f"max_seq_length={args.max_seq_length} device={on['device']} host={platform.node()}; "
        f"real tokens/step {per_step['no_packing']:.0f} -> {per_step['packing']:.0f}"
    )
    print(table(rows, ratio))
    print("# ratio = packing / no_packing (tokens/s counts real tokens, not padding)")
    write_json(args, command, rows, ratio, max_seq_length=args.max_seq_length, tokens_per_step=per_step)
    if per_step["packing"] <= per_step["no_packing"]:
        raise SystemExit(
            "packing did not raise the tokens per step: the data has no rows shorter than max_seq_length, "
            "or the trainer ignored `packing`"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory (default: build the tiny model)")
    p.add_argument("--training-file", default=str(ROOT / "data" / "train.jsonl"))
    p.add_argument("--method", choices=("qlora", "lora"), default="qlora")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-length", type=int, default=1024)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--launcher", choices=("accelerate", "python"), default="accelerate")
    p.add_argument("--python", default=sys.executable, help="interpreter to run the trainer with")
    p.add_argument("--baseline", action="store_true", help="also run plain HF Trainer + peft and compare")
    p.add_argument(
        "--compare-packing",
        action="store_true",
        help="instead: our trainer without and with sequence packing (hyperparameter `packing`), same data",
    )
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    model = args.model
    if model is None:
        model = str(work / "tiny")
        subprocess.run(
            [args.python, "-m", "tuning_trainer.tiny", "--out", model, "--quiet"],
            check=True,
            cwd=ROOT,
            env=env(),
        )
    cuda = has_cuda(args.python)
    hp: dict[str, Any] = {
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "epochs": 1,
        "max_seq_length": args.max_seq_length,
        "logging_steps": 1,
        "warmup_ratio": 0.0,
    }
    if args.gradient_checkpointing is not None:
        hp["gradient_checkpointing"] = args.gradient_checkpointing
    job = {
        "model": model,
        "training_file": args.training_file,
        "method": args.method,
        "output_dir": str(work / "trainer" / "out"),
        "hyperparameters": hp,
    }
    if args.compare_packing:
        compare_packing(args, job, work, cuda)
        return
    (work / "trainer").mkdir(parents=True, exist_ok=True)
    rows = {"trainer": run_trainer(job, args.launcher, args.python, cuda)}
    ratio = None
    if args.baseline:
        (work / "baseline").mkdir(parents=True, exist_ok=True)
        rows["hf_baseline"] = run_baseline({**job, "output_dir": str(work / "baseline" / "out")}, args.python)
        ratio = {
            k: rows["trainer"][k] / rows["hf_baseline"][k] if rows["hf_baseline"][k] else float("nan")
            for k in rows["trainer"]
            if isinstance(rows["trainer"][k], (int, float)) and k in rows["hf_baseline"]
        }
    command = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"# {command}")
    print(
        f"# method={args.method} steps={args.steps} batch={args.batch_size} launcher={args.launcher} "
        f"device={rows['trainer']['device']} host={platform.node()} cpus={os.cpu_count()}"
    )
    print(table(rows, ratio))
    if ratio:
        print("# ratio = trainer / hf_baseline (higher is better for rates, lower for time and memory)")
    write_json(args, command, rows, ratio)


if __name__ == "__main__":
    main()

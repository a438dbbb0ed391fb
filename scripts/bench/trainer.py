#!/usr/bin/env python3
"""Trainer benchmark: our trainer against HF `Trainer` + peft on the same micro-batches in the same order.

    python scripts/bench/trainer.py --baseline --rounds 3 [--shape tiny|8b-vocab|8b|1b] --json PATH
    python scripts/bench/trainer.py --quick --baseline --json PATH        # tiny counts: proves it runs
    options: [--model DIR --training-file FILE] [--method lora|qlora] [--packing on|off] [--steps N]
        [--warmup-steps N] [--max-tokens-per-batch N] [--batch-size N] [--max-seq-length N] [--layers N]
        [--rows N] [--format completion|text] [--sides ours,hf,hf_flat] [--launcher accelerate|python]
        [--gradient-checkpointing auto|on|off] [--attn auto|sdpa|eager] [--peak-tflops X] [--work DIR]

Sides, each a separate process started the same way (`accelerate launch` with the service's flags by default):
  ours     the real trainer (`-m tuning_trainer --config job.json`), read from its events.jsonl (a `metrics`
           record every step);
  hf       plain HF `Trainer` + peft (hf_baseline.py), our micro-batches padded (DataCollatorForSeq2Seq);
  hf_flat  the same with `DataCollatorWithFlattening` (padding-free: one row, position ids per example).
The micro-batches are our trainer's plan (tuning_trainer.runplan: batch_size examples, the trainer's default,
or best-fit-decreasing bins with --packing on), computed once here and by each baseline process, which
refuses to run if its plan differs; the first step's loss must agree with ours (the same batch and weights),
and every step's tokens. --shape builds a random-init model and prompt/completion data (random_llama.py):
tiny (hidden 64) or 8b-vocab (Llama-3's 128k vocabulary on 4 small layers) on CPU, 8b or 1b on a GPU.

Targets on CPU (the issue's): T1/T2 ours ÷ each baseline >= 1.0 in tokens/s in every round; T3 peak memory
ours ÷ HF <= 0.8 at --shape 8b-vocab; L-* first losses equal (rtol 1e-3 fp32, 2e-2 on a GPU in bf16).

Rounds interleave (ours, hf, hf_flat, ours, ...). Per run: tokens/s three ways over the steady state (steps
after --warmup-steps, from per-step end times): input tokens (the examples' own), trained tokens (positions
with a loss) and slots (token positions processed, padding included); padding efficiency (input / slots);
peak memory (CPU: peak RSS of the launched process tree, from wait4; CUDA: the process's max allocated);
time to first step (launch -> end of step 1); model FLOP/s and MFU (docs/benchmarks.md has the formula).
The table shows medians with their spread (min-max over rounds) and ours ÷ each baseline per round. The JSON
has `tokens_per_second_ratio` and `peak_memory_ratio` (ours ÷ plain HF, medians), the same ÷ HF flattening
(`..._flat`), every run, and the plan.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _common import ROOT, Row, machine, table  # noqa: E402

SIDES = ("ours", "hf", "hf_flat")
STARTED_KEYS = (
    "padding_efficiency",
    "micro_batch_tokens",
    "attn_implementation",
    "num_tokens",
    "trainable_tokens",
    "total_steps",
    "mixed_precision",
)
SIDE_NAMES = {"ours": "ours", "hf": "HF Trainer+peft", "hf_flat": "HF + flattening"}


@dataclass(frozen=True)
class Preset:
    """A --shape's model (random_llama.py) and job: long enough to measure, short enough for 2 cores."""

    shape: str
    rows: int
    seq_len: int  # rows of seq_len/8 .. seq_len tokens; also max_seq_length
    max_tokens_per_batch: int  # packing's token budget per micro-batch
    batch_size: int  # examples per micro-batch without packing
    steps: int
    warmup_steps: int  # steps left out of the steady state
    timeout_s: int  # per run


PRESETS = {
    # ~30 ms steps of ~1,200 tokens (8 examples of 32-256 tokens): a round of three runs takes ~35 s, mostly
    # start-up.
    "tiny": Preset("tiny", rows=400, seq_len=256, max_tokens_per_batch=1024, batch_size=8, steps=30,
                   warmup_steps=3, timeout_s=300),
    # 128k vocabulary: 4 examples of 128-1,024 tokens per micro-batch, whose fp32 logits (2 GB when padded)
    # dominate HF's memory; steps of 2-10 s, a round of three runs ~2.5 minutes on a quiet machine.
    "8b-vocab": Preset("8b-vocab", rows=160, seq_len=1024, max_tokens_per_batch=2048, batch_size=4, steps=6,
                       warmup_steps=1, timeout_s=900),
    # GPU shapes (scripts/bench/gpu_qlora.sh passes its own sizes): a run is ~1 minute, mostly loading.
    "8b": Preset("8b", rows=400, seq_len=2048, max_tokens_per_batch=8192, batch_size=4, steps=10,
                 warmup_steps=2, timeout_s=300),
    "1b": Preset("1b", rows=400, seq_len=2048, max_tokens_per_batch=8192, batch_size=4, steps=10,
                 warmup_steps=2, timeout_s=300),
}  # fmt: skip
QUICK = Preset(
    "tiny",
    rows=48,
    seq_len=128,
    max_tokens_per_batch=512,
    batch_size=4,
    steps=4,
    warmup_steps=1,
    timeout_s=240,
)

# Dense bf16 tensor-core peak per GPU (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_FLOPS = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),
    ("GH200", 989.4e12),
    ("A100", 312.0e12),
    ("L40S", 362.05e12),
    ("A10G", 70.0e12),
)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    e.pop("COVERAGE_PROCESS_START", None)  # a coverage hook in the measured processes would skew them
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "trainer"), str(ROOT), e.get("PYTHONPATH")]))
    return e


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---- processes ---------------------------------------------------------------------------------------------


def run_measured(cmd: list[str], log_path: Path, timeout: float) -> tuple[int, float, float]:
    """Run a command in its own process group, output to log_path. Returns (exit code, start time, peak RSS
    of the process tree in MiB: the largest of the process and the descendants it waited for, from wait4)."""
    with open(log_path, "w") as out:
        start = time.time()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                tail = log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"timed out after {timeout:.0f}s: {' '.join(cmd)}\n{tail}")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, start, usage.ru_maxrss / 1024


def launcher(args: argparse.Namespace, cuda: bool) -> list[str]:
    """The service's command prefix (service/tuning_service/engine/supervisor.py): accelerate launch with the
    flags of tuning_trainer.launch, all of this machine's cores for the one process on CPU."""
    if args.launcher == "python":
        return [args.python]
    from tuning_trainer.launch import launch_flags

    flags, extra = launch_flags(gpus=1 if cuda else 0, threads=os.cpu_count() or 1)
    os.environ.update(extra)
    return [args.python, "-m", "accelerate.commands.launch", *flags]


def fail(what: str, log_path: Path, code: int) -> SystemExit:
    tail = log_path.read_text(errors="replace")[-4000:]
    return SystemExit(f"{what} failed (exit {code}); the end of {log_path}:\n{tail}")


# ---- the sides -------------------------------------------------------------------------------------------


def run_ours(job: dict[str, Any], work: Path, prefix: list[str], timeout: float) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    job = {**job, "output_dir": str(work / "out")}
    (work / "job.json").write_text(json.dumps(job))
    cmd = [*prefix, "-m", "tuning_trainer", "--config", str(work / "job.json")]
    code, start, rss = run_measured(cmd, work / "output.log", timeout)
    events = work / "out" / "events.jsonl"
    records = [json.loads(x) for x in events.read_text().splitlines() if x.strip()] if events.exists() else []
    if code != 0 or not records or records[-1]["type"] != "completed":
        raise fail("our trainer", work / "output.log", code)
    started = next(r for r in records if r["type"] == "started")
    metrics = [r for r in records if r["type"] == "metrics"]
    seen = [0] + [m["tokens_seen"] for m in metrics]
    return {
        "start": start,
        "step_times": [m["time"] for m in metrics],
        "losses": [m["loss"] for m in metrics],
        "step_tokens": [b - a for a, b in itertools.pairwise(seen)],
        "rss_peak_mb": rss,
        "self_peak_mb": max(m["peak_memory_mb"] for m in metrics),
        "trainable_params": started["trainable_params"],
        "device": started["device"],
        "ready": started["time"],
        "started": {k: started[k] for k in STARTED_KEYS},
        "model_setup": started["model_setup"],
    }


def run_hf(
    job: dict[str, Any], collator: str, plan_path: Path, work: Path, prefix: list[str], timeout: float
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    settings = {
        "job": {**job, "output_dir": str(work / "unused")},
        "collator": collator,
        "plan": str(plan_path),
        "output_dir": str(work / "out"),
        "result": str(work / "result.json"),
    }
    (work / "settings.json").write_text(json.dumps(settings))
    cmd = [*prefix, str(BENCH / "hf_baseline.py"), "run", str(work / "settings.json")]
    code, start, rss = run_measured(cmd, work / "output.log", timeout)
    if code != 0 or not (work / "result.json").exists():
        raise fail(f"HF baseline ({collator})", work / "output.log", code)
    data = json.loads((work / "result.json").read_text())
    return {
        "start": start,
        "step_times": data["step_times"],
        "losses": data["losses"],
        "step_tokens": [c["tokens"] for c in data["counts"]],
        "step_slots": [c["slots"] for c in data["counts"]],
        "step_trained": [c["trained"] for c in data["counts"]],
        "step_indices": [c["indices"] for c in data["counts"]],
        "ready": data["train_begin"],
        "rss_peak_mb": rss,
        "self_peak_mb": data["peak_memory_mb"],
        "trainable_params": data["trainable_params"],
        "device": data["device"],
    }


# ---- figures -----------------------------------------------------------------------------------------------


def model_flops_per_step(plan: dict[str, Any], lora_params: int) -> list[float]:
    """Model FLOPs of each step (docs/benchmarks.md, "MFU"): 4·N per input token (forward 2N, backward
    activation gradients 2N; N = every matmul weight: the decoder layers' projections and the output head,
    not the embedding), 6·N_lora per token (forward, activation and weight gradients of the adapters), and
    causal attention 6·L·d·n² per example of n tokens (scores and values: forward 2·L·d·n², backward twice
    that), d = heads x head_dim."""
    mc = plan["model_config"]
    h, layers, vocab = mc["hidden_size"], mc["num_hidden_layers"], mc["vocab_size"]
    heads, kv = mc["num_attention_heads"], mc["num_key_value_heads"] or mc["num_attention_heads"]
    head_dim = mc.get("head_dim") or h // heads
    q = heads * head_dim
    per_layer = h * q + 2 * h * kv * head_dim + q * h + 3 * h * mc["intermediate_size"]
    n = layers * per_layer + h * vocab
    return [
        4 * n * s["tokens"]
        + 6 * lora_params * s["tokens"]
        + 6 * layers * q * sum(x * x for x in s["lengths"])
        for s in plan["steps"]
    ]


def summarise(
    side: str, raw: dict[str, Any], plan: dict[str, Any], warmup: int, peak_flops: float | None, cuda: bool
) -> dict[str, Any]:
    steps = plan["steps"]
    times = raw["step_times"]
    if len(times) != len(steps):
        raise SystemExit(f"{side}: {len(times)} steps timed, the plan has {len(steps)}")
    if raw["step_tokens"] != [s["tokens"] for s in steps]:
        raise SystemExit(f"{side}: tokens per step differ from the plan's (not the same batches)")
    if "step_indices" in raw and raw["step_indices"] != [s["indices"] for s in steps]:
        raise SystemExit(f"{side}: micro-batches differ from the plan's")
    slots_key = {"ours": "ours", "hf": "pad", "hf_flat": "flat"}[side]
    slots = raw.get("step_slots") or [s["slots"][slots_key] for s in steps]
    trained = raw.get("step_trained") or [s["trained"] for s in steps]
    w = min(warmup, len(times) - 2)
    span = times[-1] - times[w]
    measured = range(w + 1, len(times))
    tokens = sum(steps[i]["tokens"] for i in measured)
    flops = model_flops_per_step(plan, raw["trainable_params"])
    achieved = sum(flops[i] for i in measured) / span
    per_step = [steps[i]["tokens"] / (times[i] - times[i - 1]) for i in measured]
    out = {
        "time_to_first_step_s": round(times[0] - raw["start"], 2),
        "setup_s": round(raw["ready"] - raw["start"], 2),  # launch -> model loaded, about to train
        "steps": len(times),
        "measured_steps": len(measured),
        "steady_s": round(span, 3),
        "median_step_s": round(statistics.median(b - a for a, b in itertools.pairwise(times[w:])), 4),
        # The median of the steps' own rates: less sensitive to a hiccup of a shared machine than the total.
        "median_step_tokens_per_s": round(statistics.median(per_step), 1),
        "tokens_per_s": {
            "input": round(tokens / span, 1),
            "trained": round(sum(trained[i] for i in measured) / span, 1),
            "slots": round(sum(slots[i] for i in measured) / span, 1),
        },
        "padding_efficiency": round(sum(s["tokens"] for s in steps) / sum(slots), 4),
        # CPU: peak RSS of the launched tree (the same measurement for every side); CUDA: max allocated.
        "peak_memory_mb": round(raw["self_peak_mb"] if cuda else raw["rss_peak_mb"], 1),
        "self_reported_peak_mb": round(raw["self_peak_mb"], 1),
        "first_loss": raw["losses"][0],
        "last_loss": raw["losses"][-1],
        "losses": [round(x, 6) if x is not None else None for x in raw["losses"]],
        "model_tflops_per_s": round(achieved / 1e12, 4),
        "mfu": round(achieved / peak_flops, 4) if peak_flops else None,
        "trainable_params": raw["trainable_params"],
        "device": raw["device"],
        "loadavg_after": round(os.getloadavg()[0], 2),
    }
    for k in ("started", "model_setup"):
        if k in raw:
            out[k] = raw[k]
    return out


def get(d: dict[str, Any], path: str) -> float:
    for part in path.split("."):
        d = d[part]
    return float(d)  # type: ignore[arg-type]


def spread(values: list[float]) -> dict[str, float]:
    med = statistics.median(values)
    return {
        "median": round(med, 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "spread_pct": round(100 * (max(values) - min(values)) / med, 1) if med else 0.0,
    }


FIGURES = (
    ("input tokens/s", "tokens_per_s.input", ">="),
    ("trained tokens/s", "tokens_per_s.trained", ">="),
    ("slot tokens/s (padding incl.)", "tokens_per_s.slots", ">="),
    ("padding efficiency", "padding_efficiency", ">="),
    ("peak memory MiB", "peak_memory_mb", "<="),
    ("median-step input tokens/s", "median_step_tokens_per_s", ">="),
    ("time to first step s", "time_to_first_step_s", "<="),
    ("  of which set-up s", "setup_s", "<="),
    ("model TFLOP/s", "model_tflops_per_s", ">="),
    ("first loss", "first_loss", "=="),
)


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.3f}"
    return f"{x:.4f}"


def comparison_table(runs: dict[str, list[dict[str, Any]]], sides: list[str]) -> str:
    base = [s for s in sides if s != "ours"]
    head = ["what", *(SIDE_NAMES[s] for s in sides), *(f"ours/{s} per round" for s in base)]
    body = []
    for label, path, _ in FIGURES:
        line = [label]
        for s in sides:
            st = spread([get(r, path) for r in runs[s]])
            rng = f" ({fmt(st['min'])}-{fmt(st['max'])})" if len(runs[s]) > 1 else ""
            line.append(fmt(st["median"]) + rng)
        for s in base:
            # A figure the other side reports as 0 (a tiny model's TFLOP/s rounded on a loaded machine) has
            # no ratio.
            ratios = [
                get(a, path) / get(b, path) if get(b, path) else math.nan
                for a, b in zip(runs["ours"], runs[s], strict=True)
            ]
            line.append(", ".join(f"{x:.3f}" for x in ratios))
        body.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, preset: Preset, work: Path) -> tuple[str, str]:
    out = work / "data"
    if not (out / "train_variable.jsonl").exists():
        cmd = [
            args.python,
            str(BENCH / "random_llama.py"),
            "--out",
            str(out),
            "--shape",
            preset.shape,
            "--rows",
            "1",
            "--seq-len",
            str(args.max_seq_length),
            "--variable-rows",
            str(args.rows),
            "--format",
            args.format,
        ]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        # One thread: a random init is not worth two spinning OpenMP threads on a loaded machine.
        subprocess.run(cmd, cwd=ROOT, env={**env(), "OMP_NUM_THREADS": "1"}, check=True)
    return str(out / "model"), str(out / "train_variable.jsonl")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--quick", action="store_true", help="tiny counts: proves that everything runs")
    p.add_argument("--baseline", action="store_true", help="also run the HF baselines (else ours alone)")
    p.add_argument("--sides", help="comma-separated subset of ours,hf,hf_flat (default: all with --baseline)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    p.add_argument("--model", help="an existing model directory instead of building --shape")
    p.add_argument("--training-file", help="with --model: its data (default: data/train.jsonl)")
    p.add_argument("--layers", type=int, help="decoder layers of the built model (default: the shape's)")
    p.add_argument("--rows", type=int, help="rows of generated data")
    p.add_argument(
        "--format",
        choices=("completion", "text"),
        default="completion",
        help="generated data: prompt/completion rows (prompt not trained) or text rows",
    )
    p.add_argument("--method", choices=("lora", "qlora"), default="lora")
    p.add_argument(
        "--packing",
        choices=("on", "off"),
        default="off",
        help="the trainer's `packing` (default off, as the trainer's own default: batch_size examples per "
        "micro-batch; on: best-fit bins of --max-tokens-per-batch tokens)",
    )
    p.add_argument("--max-tokens-per-batch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-seq-length", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup-steps", type=int, help="steps left out of the steady state")
    p.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--attn", default="auto", help="attn_implementation (both sides use what ours resolves)")
    p.add_argument("--launcher", choices=("accelerate", "python"), default="accelerate")
    p.add_argument("--python", default=sys.executable, help="interpreter for every side")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: by GPU name)")
    p.add_argument("--loss-rtol", type=float, help="first-loss agreement (default 1e-3 CPU fp32, 2e-2 GPU)")
    p.add_argument("--work", help="working folder, kept (default: a temporary one, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary working folder (logs, events)")
    p.add_argument("--timeout", type=float, help="per run, seconds")
    p.add_argument("--label", default="", help="a name for this configuration in the output")
    p.add_argument("--json", help="write the results here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    preset = QUICK if args.quick else PRESETS[args.shape]
    args.rows = args.rows or preset.rows
    args.max_seq_length = args.max_seq_length or preset.seq_len
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or preset.steps
    warmup = preset.warmup_steps if args.warmup_steps is None else args.warmup_steps
    if steps < warmup + 2:
        raise SystemExit(f"--steps must be at least --warmup-steps + 2 ({warmup + 2})")
    sides = args.sides.split(",") if args.sides else (list(SIDES) if args.baseline else ["ours"])
    if sides[0] != "ours" or any(s not in SIDES for s in sides):
        raise SystemExit(f"--sides: ours first, then any of {SIDES[1:]}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench(args, preset, rounds, steps, warmup, sides, work)
    finally:
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)  # models, runs, logs: a 128k-vocabulary model is 0.6 GB


def bench(
    args: argparse.Namespace,
    preset: Preset,
    rounds: int,
    steps: int,
    warmup: int,
    sides: list[str],
    work: Path,
) -> None:
    t0 = time.monotonic()

    if args.model:
        model, data = args.model, args.training_file or str(ROOT / "data" / "train.jsonl")
    else:
        model, data = build_model(args, preset, work)
    probe = subprocess.run(
        [args.python, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True
    )
    cuda = probe.stdout.strip() == "True"
    gc = {"auto": "auto", "on": True, "off": False}[args.gradient_checkpointing]
    job = {
        "model": model,
        "training_file": data,
        "output_dir": str(work / "unused"),
        "method": args.method,
        "seed": 42,
        "hyperparameters": {
            "max_steps": steps,
            "packing": args.packing == "on",
            "max_tokens_per_batch": args.max_tokens_per_batch or preset.max_tokens_per_batch,
            "batch_size": args.batch_size or preset.batch_size,
            "max_seq_length": args.max_seq_length,
            "logging_steps": 1,  # a metrics record (its time, tokens_seen, loss) after every step
            "gradient_checkpointing": gc,
            "attn_implementation": args.attn,
        },
    }
    (work / "job.json").write_text(json.dumps(job))
    plan_path = work / "plan.json"
    subprocess.run(
        [args.python, str(BENCH / "hf_baseline.py"), "plan", str(work / "job.json"), str(plan_path)],
        cwd=ROOT,
        env=env(),
        check=True,
    )
    plan = json.loads(plan_path.read_text())
    prefix = launcher(args, cuda)
    timeout = args.timeout or preset.timeout_s
    tokens = [s["tokens"] for s in plan["steps"]]
    log(
        f"{len(plan['steps'])} steps of {min(tokens)}-{max(tokens)} tokens ({plan['num_examples']} examples),"
        f" "
        f"attention {plan['attn_implementation']}, layout {plan['layout']}, gradient checkpointing "
        f"{plan['gradient_checkpointing']}; sides {','.join(sides)} x {rounds} rounds; work {work}"
    )

    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    peak_flops: float | None = args.peak_tflops * 1e12 if args.peak_tflops else None
    for r in range(rounds):
        for side in sides:
            where = work / f"r{r}-{side}"
            shutil.rmtree(where, ignore_errors=True)
            if side == "ours":
                raw = run_ours(job, where, prefix, timeout)
            else:
                collator = "flatten" if side == "hf_flat" else "pad"
                raw = run_hf(job, collator, plan_path, where, prefix, timeout)
            if cuda and peak_flops is None:
                peak_flops = next((f for k, f in PEAK_FLOPS if k in raw["device"]), None)
            result = summarise(side, raw, plan, warmup, peak_flops, cuda)
            runs[side].append(result)
            log(
                f"round {r + 1} {side}: {result['tokens_per_s']['input']:,.0f} input tok/s, peak "
                f"{result['peak_memory_mb']:,.0f} MiB, first loss {result['first_loss']:.6f}, "
                f"first step at {result['time_to_first_step_s']:.1f}s"
            )

    rtol = args.loss_rtol or (2e-2 if cuda else 1e-3)
    loss_check = {}
    for side in sides[1:]:
        worst = max(
            abs(a["first_loss"] - b["first_loss"]) / abs(a["first_loss"])
            for a, b in zip(runs["ours"], runs[side], strict=True)
        )
        loss_check[side] = {"max_relative_difference": worst, "rtol": rtol, "equal": worst <= rtol}
    ratios: dict[str, Any] = {}
    for side in sides[1:]:
        per_round = {
            "tokens_per_second": [
                a["tokens_per_s"]["input"] / b["tokens_per_s"]["input"]
                for a, b in zip(runs["ours"], runs[side], strict=True)
            ],
            "peak_memory": [
                a["peak_memory_mb"] / b["peak_memory_mb"]
                for a, b in zip(runs["ours"], runs[side], strict=True)
            ],
        }
        med = {
            "tokens_per_second": statistics.median(r["tokens_per_s"]["input"] for r in runs["ours"])
            / statistics.median(r["tokens_per_s"]["input"] for r in runs[side]),
            "peak_memory": statistics.median(r["peak_memory_mb"] for r in runs["ours"])
            / statistics.median(r["peak_memory_mb"] for r in runs[side]),
        }
        ratios[side] = {
            "per_round": {k: [round(x, 4) for x in v] for k, v in per_round.items()},
            "median": {k: round(v, 4) for k, v in med.items()},
        }

    rows: list[Row] = []
    shape = preset.shape
    for row_id, side, label in (("T1", "hf", "HF Trainer+peft"), ("T2", "hf_flat", "HF + flattening")):
        if side not in ratios:
            continue
        per_round = ratios[side]["per_round"]["tokens_per_second"]
        rows.append(
            Row(
                row_id,
                f"input tokens/s ours ÷ {label}, worst round ({shape})",
                min(per_round),
                "x",
                None,
                "",
                ">=",
                1.0,
                "value",
                {"per_round": per_round},
            )
        )
    if "hf" in ratios and shape == "8b-vocab":
        rows.append(
            Row(
                "T3",
                f"peak memory ours ÷ HF Trainer+peft (medians, {shape})",
                ratios["hf"]["median"]["peak_memory"],
                "x",
                None,
                "",
                "<=",
                0.8,
                "value",
                {"per_round": ratios["hf"]["per_round"]["peak_memory"]},
            )
        )
    for side, check in loss_check.items():
        rows.append(
            Row(
                f"L-{side}",
                f"first loss |ours - {side}| / ours (same batch, same weights)",
                check["max_relative_difference"],
                "",
                None,
                "",
                "<=",
                rtol,
                "value",
            )
        )

    command = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    info = machine()
    device = runs["ours"][0]["device"]
    label = f" [{args.label}]" if args.label else ""
    print(f"# trainer{label}: {command}")
    print(
        f"# shape={shape} method={args.method} packing={args.packing} steps={steps} (steady state: steps "
        f"{min(warmup, steps - 2) + 2}-{steps}) rounds={rounds} data={args.format} device={device} "
        f"cpus={info['cpus']} load={info['loadavg_1_5_15']}"
    )
    print(
        f"# plan: {plan['num_examples']} examples, micro-batches of {min(tokens)}-{max(tokens)} tokens, "
        f"{plan['attn_implementation']}, layout {plan['layout']}, gradient checkpointing "
        f"{plan['gradient_checkpointing']}; medians over rounds (min-max)"
    )
    print(comparison_table(runs, sides))
    if rows:
        print(table(rows))
    print(f"# {time.monotonic() - t0:.0f}s in all")

    result = {
        "bench": "trainer",
        "command": command,
        "quick": bool(args.quick),
        "label": args.label,
        "machine": info,
        "config": {
            "shape": shape,
            "method": args.method,
            "packing": args.packing,
            "steps": steps,
            "warmup_steps": warmup,
            "rounds": rounds,
            "sides": sides,
            "format": args.format,
            "launcher": args.launcher,
            "job": job,
            "cuda": cuda,
            "peak_flops": peak_flops,
        },
        "results": [r.as_json() for r in rows],
        "tokens_per_second_ratio": ratios.get("hf", {}).get("median", {}).get("tokens_per_second"),
        "peak_memory_ratio": ratios.get("hf", {}).get("median", {}).get("peak_memory"),
        "tokens_per_second_ratio_flat": ratios.get("hf_flat", {}).get("median", {}).get("tokens_per_second"),
        "peak_memory_ratio_flat": ratios.get("hf_flat", {}).get("median", {}).get("peak_memory"),
        "ratios": ratios,
        "first_loss_check": loss_check,
        "medians": {
            s: {label: spread([get(r, path) for r in runs[s]]) for label, path, _ in FIGURES} for s in sides
        },
        "runs": runs,
        "plan": {k: v for k, v in plan.items() if k != "steps"}
        | {"step_tokens": tokens, "step_trained": [s["trained"] for s in plan["steps"]]},
        "details": {"work": str(work) if args.work or args.keep else None},
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    bad = [s for s, c in loss_check.items() if not c["equal"]]
    if bad:
        raise SystemExit(f"first losses differ beyond rtol {rtol} for {bad}: not the same batches or weights")


if __name__ == "__main__":
    main()

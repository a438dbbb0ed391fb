"""A fake trainer for the narrow supervision tests: it speaks the trainer protocol (docs/trainer-protocol.md:
events.jsonl records, exit codes, SIGTERM -> checkpoint + `interrupted` + exit 4) without any ML.

Run as `python fake_trainer.py --config JOB.json`. The behaviour comes from the job's model name,
`fake:<mode>[?key=value&...]`, so every test job picks its own:

  complete      started, `steps` metrics records, completed (an adapter folder), exit 0
  fail          started, (after `wait` s) failed {code: invalid_data, data_code, line}, exit 2
  oom           started, failed {code: out_of_memory, hint, suggested_batch_size: half the batch}, exit 3;
                with until_batch=N it trains like `complete` once the config's batch_size is at most N
  crash         started, a few metrics, a traceback on stderr, exit 1 with no terminal record (at step 2, or
                `crash_at`; with once=1 only when not resumed from a checkpoint)
  killself      started, then SIGKILLs itself (no terminal record)
  ignore_term   ignores SIGTERM and keeps running (only SIGKILL stops it)
  grandchildren spawns `children` processes in its group (which ignore SIGTERM when stubborn=1), then
                runs like `complete` but honours SIGTERM
  partial       writes records in pieces (a partial last line for a while), plus one malformed line
Options: steps (default 5), delay (seconds per step, default 0.01), save (write checkpoint-N every `save`
steps, like the trainer's save_steps). A config with `resume_from` (.../checkpoint-N) continues at step N.
Every launch appends "<pid> <CUDA_VISIBLE_DEVICES>" to <output_dir>/launches.txt: tests prove a job ran once,
and what the key's credentials file (.secrets.json) held to <output_dir>/secrets-seen.jsonl (tests only).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl

from tuning_trainer.events import RECORD_MARKER, STDOUT_ENV

stop_requested = False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    out = Path(cfg["output_dir"])
    mode, _, query = cfg["model"].removeprefix("fake:").partition("?")
    opts = dict(parse_qsl(query))
    steps = int(opts.get("steps", 5))
    delay = float(opts.get("delay", 0.01))
    with open(out / "launches.txt", "a") as f:
        f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\n")
    secrets = out / ".secrets.json"
    with open(out / "secrets-seen.jsonl", "a") as f:
        f.write(json.dumps(json.loads(secrets.read_text()) if secrets.exists() else {}) + "\n")
    events = open(out / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    to_stdout = os.environ.get(STDOUT_ENV) == "1"
    seq = 0

    def emit(type_: str, **fields: object) -> None:
        nonlocal seq
        seq += 1
        line = json.dumps({"type": type_, "time": time.time(), "seq": seq, **fields})
        events.write(line + "\n")
        events.flush()
        os.fsync(events.fileno())
        if to_stdout:  # as the trainer does under Ray (tuning_trainer/events.py)
            sys.stdout.write("\n" + RECORD_MARKER + line + "\n")
            sys.stdout.flush()

    def on_term(signum: int, frame: object) -> None:
        global stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore_term" else on_term)
    if mode == "grandchildren":
        # Each child reports once its SIGTERM disposition is set: a test never signals a half-started child.
        code = (
            "import signal, sys, time, pathlib\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if opts.get("stubborn") == "1" else "")
            + "pathlib.Path(sys.argv[1]).touch()\n"
            + "time.sleep(120)\n"
        )
        n = int(opts.get("children", 2))
        for i in range(n):
            subprocess.Popen([sys.executable, "-c", code, str(out / f"child-{i}.ready")])
        deadline = time.monotonic() + 10
        while len(list(out.glob("child-*.ready"))) < n and time.monotonic() < deadline:
            time.sleep(0.01)
    print(f"fake trainer {mode} starting, pid {os.getpid()}", flush=True)
    start = int(Path(cfg["resume_from"]).name.split("-")[-1]) if cfg.get("resume_from") else 0
    save = int(opts.get("save", 0))
    batch = cfg["hyperparameters"].get("batch_size")
    batch = batch if isinstance(batch, int) else 2
    emit(
        "started",
        total_steps=steps,
        total_epochs=1,
        num_examples=8,
        start_step=start,
        config={**cfg, "hyperparameters": {**cfg["hyperparameters"], "epochs": 1, "batch_size": batch}},
        resolved_auto={"epochs": 1, "batch_size": batch},
    )

    if mode == "fail":
        time.sleep(float(opts.get("wait", 0)))
        print("ERROR: bad data on line 3", flush=True)
        emit(
            "failed", code="invalid_data", message="line 3: not valid JSON", data_code="invalid_json", line=3
        )
        return 2
    if mode == "oom" and batch > int(opts.get("until_batch", 0)):
        emit(
            "failed",
            code="out_of_memory",
            message="CUDA out of memory",
            hint="lower batch_size",
            suggested_batch_size=batch // 2 if batch > 1 else None,
            exit_code=3,
        )
        return 3
    if mode == "killself":
        print("about to die", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "partial":
        emit("metrics", step=1, total_steps=steps, loss=2.0, tokens_seen=10)
        events.write('{"type": "metrics", "time": 1.0, "step": 2, "total_')
        events.flush()
        time.sleep(float(opts.get("hold", 0.5)))
        events.write(f'steps": {steps}, "loss": 1.5, "tokens_seen": 20}}\nthis is not json\n')
        events.flush()
        emit(
            "completed", adapter_path=str(out / "adapter"), final_loss=1.5, total_steps=steps, tokens_seen=20
        )
        return 0

    step = start
    while step < steps or mode == "ignore_term":
        if stop_requested:
            ckpt = out / "checkpoints" / f"checkpoint-{step}"
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "trainer_state.pt").write_text("{}")
            emit("checkpoint", step=step, path=str(ckpt))
            emit("interrupted", step=step, checkpoint_path=str(ckpt))
            print(f"interrupted at step {step}", flush=True)
            return 4
        time.sleep(delay)
        step += 1
        crash_now = step == int(opts.get("crash_at", 2)) and not (opts.get("once") == "1" and start)
        if mode == "crash" and crash_now:
            print("Traceback (most recent call last):\nRuntimeError: boom", file=sys.stderr, flush=True)
            return 1
        print(f"step {step}/{steps}", flush=True)
        emit(
            "metrics",
            step=step,
            total_steps=steps,
            epoch=step / steps,
            loss=2.0 / step,
            learning_rate=1e-4,
            tokens_per_second=1000.0,
            tokens_seen=step * 10,
            eta_seconds=(steps - step) * delay,
        )
        if save and step % save == 0:
            ckpt = out / "checkpoints" / f"checkpoint-{step}"
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "trainer_state.pt").write_text("{}")
            emit("checkpoint", step=step, path=str(ckpt))
    adapter = out / "adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text("{}")
    emit(
        "completed",
        adapter_path=str(adapter),
        final_loss=2.0 / steps,
        total_steps=steps,
        tokens_seen=steps * 10,
    )
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

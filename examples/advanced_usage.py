#!/usr/bin/env python
"""Advanced usage of the tuning SDK: six scenarios, from an interactive menu or the command line.

  1. error handling        every error class the SDK raises, and what it carries
  2. context manager       `with TuningClient(...) as client:` closes the connections for you
  3. cancel a job          cancel a running job; the trainer checkpoints and stops
  4. streaming logs        follow a job's records live (resumes by itself if the connection drops)
  5. batch operations      a small learning-rate sweep: several jobs, one table, then clean-up
  6. custom progress bar   your own on_progress callback

    python examples/advanced_usage.py                 # the menu
    python examples/advanced_usage.py --scenario 3    # one scenario, no terminal needed
    python examples/advanced_usage.py --all           # all six (exit status 0 only if all behaved)

Defaults: the tiny local model `tiny-llama`, `data/train.jsonl`, the service at $TUNING_BASE_URL or
http://localhost:8000 with $TUNING_API_KEY or the development key test-key-001. --model picks another model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable

from tuning_sdk import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    TuningClient,
    TuningError,
    TuningJob,
    UnprocessableEntityError,
)

ARGS: argparse.Namespace


def client() -> TuningClient:
    return TuningClient(api_key=ARGS.api_key, base_url=ARGS.base_url)


def create(c: TuningClient, **hyperparameters: object) -> TuningJob:
    hp = {"epochs": 1, "learning_rate": 2e-4, **hyperparameters}
    job = c.tunings.create(model=ARGS.model, training_file=ARGS.training_file, hyperparameters=hp)
    print(f"   created {job.id} ({job.status}) with {hp}")
    return job


def describe_end(job: TuningJob) -> str:
    if job.is_successful:
        loss = job.metrics.train_loss if job.metrics else None
        return f"succeeded in {job.duration:.1f}s, final loss {loss:.4f}" if loss is not None else "succeeded"
    return f"{job.status}: {job.error}" if job.error else job.status


# ---- 1 ---------------------------------------------------------------------------------------------------


def scenario_error_handling() -> bool:
    """Provoke each kind of error and show what the exception carries."""
    ok = True

    def expect(title: str, cls: type[TuningError], call: Callable[[], object]) -> None:
        nonlocal ok
        try:
            call()
        except cls as exc:
            print(f"   {title}: {type(exc).__name__}")
            print(f"      status_code={exc.status_code} code={exc.code} param={exc.param}")
            print(f"      message={exc.message!r} request_id={exc.request_id}")
        except TuningError as exc:
            ok = False
            print(f"   {title}: expected {cls.__name__}, got {type(exc).__name__}: {exc}")
        else:
            ok = False
            print(f"   {title}: expected {cls.__name__}, but the call succeeded")

    with client() as c:
        with TuningClient(api_key="not-a-real-key", base_url=ARGS.base_url) as bad:
            expect("wrong API key", AuthenticationError, lambda: bad.tunings.list().data)
        expect("unknown job id", NotFoundError, lambda: c.tunings.get("ftjob-does-not-exist"))
        expect(
            "invalid hyperparameter",
            UnprocessableEntityError,
            lambda: c.tunings.create(
                model=ARGS.model, training_file=ARGS.training_file, hyperparameters={"learning_rate": -1.0}
            ),
        )
        expect(
            "path outside the files root",
            BadRequestError,
            lambda: c.tunings.create(model=ARGS.model, training_file="../../etc/passwd"),
        )
    # Port 9 (discard) has no HTTP server: a connection error, after no retries.
    with TuningClient(api_key="k", base_url="http://127.0.0.1:9", max_retries=0) as unreachable:
        expect("unreachable service", APIConnectionError, unreachable.health_check)
    print("   (connection errors, 408, 429 and 5xx are retried automatically before they are raised)")
    return ok


# ---- 2 ---------------------------------------------------------------------------------------------------


def scenario_context_manager() -> bool:
    """The client as a context manager: its connections close when the block ends, even on an error."""
    with TuningClient(api_key=ARGS.api_key, base_url=ARGS.base_url) as c:
        health = c.health_check()
        recent = c.tunings.list(limit=3).data
        print(f"   service {health['status']}, {health.get('total_jobs')} jobs in all; latest:")
        for job in recent:
            print(f"      {job.id} {job.status}")
    print("   the with-block ended: the client is closed")
    return health["status"] == "healthy"


# ---- 3 ---------------------------------------------------------------------------------------------------


def scenario_cancel() -> bool:
    """Start a longer job, cancel it once it runs, and wait for it to stop."""
    with client() as c:
        job = create(c, epochs=5)
        deadline = time.monotonic() + 120
        while job.status in ("validating", "queued") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = c.tunings.get(job.id)
        print(f"   job is {job.status}; cancelling")
        try:
            job = c.tunings.cancel(job.id)
            print(f"   cancel accepted: {job.status}")
        except ConflictError as exc:
            print(f"   too late to cancel ({exc.code}): the job already ended")
        job = c.tunings.wait(job.id)
        print(f"   final status: {job.status}")
        return job.status in ("cancelled", "succeeded", "failed")


# ---- 4 ---------------------------------------------------------------------------------------------------


def scenario_stream_logs() -> bool:
    """Follow a job's records as they happen; the iterator ends when the job does."""
    with client() as c:
        job = create(c, max_steps=40)
        metrics_seen = 0
        last = None
        for rec in c.tunings.stream_logs(job.id):
            last = rec
            if rec.type == "metrics":
                metrics_seen += 1
                if metrics_seen % 10 != 1:  # one metrics line in ten keeps the output readable
                    continue
            elif rec.type == "log":
                continue  # the trainer's raw output: `tuning jobs logs ID` shows it all
            print(f"   [{rec.seq:>4}] {rec.format()}")
        print(f"   stream ended with record {last.seq if last else None}; {metrics_seen} metrics records")
        return last is not None and last.is_terminal_status


# ---- 5 ---------------------------------------------------------------------------------------------------


def scenario_batch() -> bool:
    """A learning-rate sweep: create several jobs at once, wait for all, compare, delete."""
    rates = [1e-4, 3e-4, 1e-3]
    with client() as c:
        # A short sweep: 30 optimizer steps each is enough to compare the early loss curves.
        jobs = [create(c, learning_rate=lr, max_steps=30) for lr in rates]
        print("   waiting for all of them (the service runs them one after another)")
        done = [c.tunings.wait(j.id) for j in jobs]
        print(f"   {'learning rate':>13}  {'job':<30} result")
        for lr, job in zip(rates, done, strict=True):
            print(f"   {lr:>13g}  {job.id:<30} {describe_end(job)}")
        for job in done:
            c.tunings.delete(job.id)
        print(f"   deleted the {len(done)} jobs")
        return all(j.is_terminal for j in done)


# ---- 6 ---------------------------------------------------------------------------------------------------


def scenario_progress_bar() -> bool:
    """Draw your own progress bar from on_progress (redrawn in place on a terminal)."""
    tty = sys.stdout.isatty()
    width = max(10, min(40, shutil.get_terminal_size().columns - 60))
    printed = {-1}

    def bar(job: TuningJob) -> None:
        m = job.metrics
        assert m is not None and m.train_loss is not None  # guaranteed by wait()
        decile = int(m.progress * 10)
        if not tty and decile in printed:
            return  # in a log file, one line per 10 %
        printed.add(decile)
        filled = round(m.progress * width)
        text = (
            f"   |{'█' * filled}{'░' * (width - filled)}| {m.progress * 100:5.1f}% "
            f"epoch {m.current_epoch}/{m.total_epochs} loss {m.train_loss:.4f}"
        )
        if m.tokens_per_second:
            text += f" {m.tokens_per_second:,.0f} tok/s"
        print("\r" + text if tty else text, end="" if tty else "\n", flush=True)

    with client() as c:
        job = create(c, max_steps=40)
        job = c.tunings.wait(job.id, on_progress=bar)
        if tty:
            print()
        print(f"   {describe_end(job)}")
        return job.is_terminal


SCENARIOS: list[tuple[str, Callable[[], bool]]] = [
    ("error handling", scenario_error_handling),
    ("context manager", scenario_context_manager),
    ("cancel a job", scenario_cancel),
    ("streaming logs", scenario_stream_logs),
    ("batch operations", scenario_batch),
    ("custom progress bar", scenario_progress_bar),
]


def run(number: int) -> bool:
    title, fn = SCENARIOS[number - 1]
    print(f"\n== {number}. {title}: {(fn.__doc__ or '').strip()}")
    try:
        ok = fn()
    except TuningError as exc:
        print(f"   unexpected error: {type(exc).__name__}: {exc}")
        ok = False
    print(f"   -> {'ok' if ok else 'NOT AS EXPECTED'}")
    return ok


def menu() -> int:
    while True:
        print("\nTuning SDK, advanced usage:")
        for i, (title, _) in enumerate(SCENARIOS, 1):
            print(f"  {i}. {title}")
        print("  a. all of them\n  q. quit")
        try:
            choice = input("choose: ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if choice in ("q", "quit", "exit", ""):
            return 0
        if choice in ("a", "all"):
            for i in range(1, len(SCENARIOS) + 1):
                run(i)
        elif choice.isdigit() and 1 <= int(choice) <= len(SCENARIOS):
            run(int(choice))
        else:
            print(f"   no such choice: {choice!r}")


def main() -> int:
    global ARGS
    parser = argparse.ArgumentParser(description="Six advanced scenarios of the tuning SDK.")
    parser.add_argument("--model", default="tiny-llama", help="base model (default: the tiny local one)")
    parser.add_argument("--training-file", default="data/train.jsonl", help="JSONL file on the service")
    parser.add_argument("--base-url", default=os.environ.get("TUNING_BASE_URL", "http://localhost:8000"))
    # test-key-001 is the service's development key: fine for an example, never for a deployment.
    parser.add_argument("--api-key", default=os.environ.get("TUNING_API_KEY", "test-key-001"))
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--scenario",
        type=int,
        choices=range(1, len(SCENARIOS) + 1),
        metavar="N",
        help="run scenario N (1-6) and exit",
    )
    which.add_argument("--all", action="store_true", help="run all six scenarios and exit")
    ARGS = parser.parse_args()
    if ARGS.scenario:
        return 0 if run(ARGS.scenario) else 1
    if ARGS.all:
        results = [run(i) for i in range(1, len(SCENARIOS) + 1)]
        print(f"\n{sum(results)}/{len(results)} scenarios behaved as expected")
        return 0 if all(results) else 1
    if not sys.stdin.isatty():
        parser.error("no terminal for the menu: use --scenario N or --all")
    return menu()


if __name__ == "__main__":
    sys.exit(main())

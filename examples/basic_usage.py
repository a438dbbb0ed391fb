#!/usr/bin/env python
"""Basic usage of the tuning SDK, in seven steps.

  1. create a client          2. check the service's health     3. create a fine-tuning job
  4. read the job's status    5. list jobs                      6. wait for it, showing progress
  7. show the result and close the client

Runs against a service at --base-url (default $TUNING_BASE_URL or http://localhost:8000) on the tiny local
model `tiny-llama` and the shipped `data/train.jsonl`, so it finishes in seconds on a laptop CPU:

    python examples/basic_usage.py
    python examples/basic_usage.py --model meta-llama/Llama-2-7b-hf   # a real model, on a GPU machine

Exit status: 0 when the job succeeded, 1 when it failed or was cancelled, 2 when the service failed us.
"""

from __future__ import annotations

import argparse
import os
import sys

from tuning_sdk import TuningClient, TuningError, TuningJob


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The tuning SDK in seven steps.")
    parser.add_argument("--model", default="tiny-llama", help="base model (default: the tiny local one)")
    parser.add_argument("--training-file", default="data/train.jsonl", help="JSONL file on the service")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--base-url", default=os.environ.get("TUNING_BASE_URL", "http://localhost:8000"))
    # test-key-001 is the service's development key: fine for an example, never for a deployment.
    parser.add_argument("--api-key", default=os.environ.get("TUNING_API_KEY", "test-key-001"))
    return parser.parse_args()


def show_progress(job: TuningJob) -> None:
    m = job.metrics
    if m is None:
        return
    loss = f"{m.train_loss:.4f}" if m.train_loss is not None else "-"
    print(
        f"   progress {m.progress * 100:5.1f}% | epoch {m.current_epoch}/{m.total_epochs} | "
        f"step {m.current_step}/{m.total_steps} | loss {loss}",
        flush=True,
    )


def main() -> int:
    args = parse_args()

    print("Step 1: create a client")
    client = TuningClient(api_key=args.api_key, base_url=args.base_url)
    print(f"   {client!r}")
    try:
        print("\nStep 2: check the service's health")
        health = client.health_check()
        print(
            f"   status: {health['status']}, version: {health.get('version')}, "
            f"active jobs: {health.get('active_jobs')}, total jobs: {health.get('total_jobs')}"
        )

        print(f"\nStep 3: create a fine-tuning job ({args.model} on {args.training_file})")
        job = client.tunings.create(
            model=args.model,
            training_file=args.training_file,
            hyperparameters={"epochs": args.epochs, "learning_rate": 0.0002, "batch_size": 4},
            suffix="basic-example",
        )
        print(f"   created {job.id} ({job.status})")

        print("\nStep 4: read the job's status")
        job = client.tunings.get(job.id)
        position = f", queue position {job.queue_position}" if job.queue_position else ""
        print(
            f"   {job.id}: {job.status}{position}, method {job.method}, hyperparameters "
            f"{job.hyperparameters.to_dict()}"
        )

        print("\nStep 5: list the most recent jobs")
        for listed in client.tunings.list(limit=5).data:
            print(f"   {listed.id}  {listed.status:<10} {listed.model}")

        print("\nStep 6: wait for the job to finish")
        job = client.tunings.wait(job.id, on_progress=show_progress)

        print("\nStep 7: the result")
        if job.is_successful:
            print("   training succeeded")
            print(f"   fine-tuned model: {job.fine_tuned_model}")
            print(f"   adapter:          {job.adapter_path}")
            if job.duration is not None:
                print(f"   duration:         {job.duration:.1f}s")
            if job.metrics is not None and job.metrics.train_loss is not None:
                print(f"   final loss:       {job.metrics.train_loss:.4f}")
            print(f"   trained tokens:   {job.trained_tokens}")
            return 0
        print(f"   training ended {job.status}: {job.error}")
        if job.error is not None and job.error.log_tail:
            print("   last lines of the trainer's output:")
            for line in job.error.log_tail[-10:]:
                print(f"     {line}")
        return 1
    except TuningError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())

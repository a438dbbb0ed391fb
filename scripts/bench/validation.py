#!/usr/bin/env python3
"""B8: what validating a request against its schema (schema/, pydantic) costs, per request, in process.

    python scripts/bench/validation.py [--runs 7] [--json PATH] [--quick]

Each step runs N times per round, rounds interleaved, and the best round's time per call is kept (the
least disturbed by the rest of a shared machine). The baseline of every row is `json.loads` of the same
create body: a cost every create request pays already. Reads (tunings.get, a list page) validate nothing
but their query string: their bodies are plain dicts, encoded once and cached (api/jobcache.py), and
tests/service/api/test_reads.py holds them to that; B1/B2 measure them over HTTP.

Rows:
  B8a  a typical native create body -> CreateTuningRequest (what api/params.body does)
  B8b  an OpenAI create body -> OpenAICreateJob -> the native request (to_native: no second parse)
  B8c  a refused create body: validation, the first problem, its message (the error path)
  B8d  a list page's query string -> ListJobsQuery (the only validation on a read)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from _common import Row, finish, parser
from pydantic import ValidationError

from tuning_service.errors import problem_error
from tuning_service.schema.jobs import CreateTuningRequest, ListJobsQuery
from tuning_service.schema.openai import OpenAICreateJob
from tuning_trainer.schema import first_problem, json_schema

NATIVE = {
    "model": "meta-llama/Llama-3.1-8B",
    "training_file": "data/train.jsonl",
    "validation_file": "data/valid.jsonl",
    "hyperparameters": {"epochs": 3, "learning_rate": 2e-4, "batch_size": 8, "lora_r": 16, "lora_alpha": 32},
    "suffix": "support-bot",
    "metadata": {"team": "search", "run": "42"},
}
OPENAI = {
    "model": "meta-llama/Llama-3.1-8B",
    "training_file": "file-0123456789abcdef01234567",
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 8}}},
    "suffix": "support-bot",
}
BAD = {**NATIVE, "hyperparameters": {**NATIVE["hyperparameters"], "learning_rate": 2.0}}
QUERY = {"limit": "100", "status": "succeeded", "after": "ftjob-0123456789abcdef01234567"}
SCHEMA = json_schema(CreateTuningRequest)


def refused() -> Any:
    try:
        CreateTuningRequest.model_validate(BAD)
    except ValidationError as exc:
        return problem_error(first_problem(exc, SCHEMA))
    raise AssertionError("the bad body was accepted")


STEPS: dict[str, Callable[[], Any]] = {
    "json": lambda: json.loads(RAW),
    "native": lambda: CreateTuningRequest.model_validate(NATIVE),
    "openai": lambda: OpenAICreateJob.model_validate(OPENAI).to_native(),
    "refused": refused,
    "query": lambda: ListJobsQuery.model_validate(QUERY),
}
RAW = json.dumps(NATIVE).encode()


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=7, help="interleaved rounds (the best is kept)")
    args = p.parse_args()
    runs, n = (2, 200) if args.quick else (args.runs, 20_000)
    best: dict[str, float] = {}
    for _ in range(runs):
        for name, fn in STEPS.items():
            us = per_call_us(fn, n)
            best[name] = min(best.get(name, us), us)
    base, base_what = best["json"], "json.loads of the create body"

    def row(id_: str, what: str, step: str, target_us: float) -> Row:
        return Row(id_, what, best[step], "µs", base, base_what, "<=", target_us, "value")

    rows = [
        row("B8a", "native create body -> CreateTuningRequest", "native", 100.0),
        row("B8b", "OpenAI create body -> native request", "openai", 100.0),
        row("B8c", "refused create body -> APIError (message)", "refused", 200.0),
        row("B8d", "list query -> ListJobsQuery", "query", 20.0),
    ]
    finish("validation", rows, args, {"per_call_us": best, "calls_per_round": n, "rounds": runs})


if __name__ == "__main__":
    main()

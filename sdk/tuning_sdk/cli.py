"""`tuning`: the command line of the SDK (installed with it; no extra dependencies).

    tuning health
    tuning usage
    tuning jobs create --model M --training-file F [--method M] [--adapter A] [--from-checkpoint REF]
                       [--hp key=value ...] [--priority N] [--max-runtime-seconds N] [--auto-retry N]
                       [--tensorboard] [--wandb-project P ...] [--mlflow ...] [--wait]
    tuning jobs list [--status S] [--limit N] | get ID | cancel ID | delete ID
    tuning jobs logs ID [-f]
    tuning jobs wait ID [--timeout S] [--stop-on-pause]
    tuning jobs events ID | checkpoints ID | pause ID | resume ID
    tuning jobs download ID DIR [--checkpoint STEP | --artifact tensorboard] [--overwrite]
    tuning files upload PATH | list | get ID | delete ID | content ID [-o FILE]
    tuning models list | get ID | delete ID
    tuning chat MODEL [--prompt TEXT [--json]] [--system TEXT] [--temperature T] [--max-tokens N]
                [--seed N] [--compare-base]

Global options go before the command: ``tuning --json jobs get ID``. ``--base-url``/``--api-key`` default to
``TUNING_BASE_URL``/``TUNING_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from . import _cli_artifacts, _cli_chat
from ._client import TuningClient
from ._errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    TuningError,
    WaitTimeoutError,
)
from ._models import TuningEstimate, TuningJob, _reward_parts
from ._objects import KeyUsage
from ._transfer import ArchiveError
from ._version import __version__

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_AUTH = 4
EXIT_NOT_FOUND = 5
EXIT_CONNECTION = 6
EXIT_SERVER = 7
EXIT_WAIT_TIMEOUT = 8
EXIT_PAUSED = 9
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}    success (for wait / create --wait: the job succeeded)
  {EXIT_JOB_FAILED}    the job ended failed or cancelled (wait / create --wait)
  {EXIT_USAGE}    bad command line or configuration (e.g. no API key; chat --compare-base on a base model)
  {EXIT_REJECTED}    the service rejected the request (400, 409, 413, 422, 429 quota_exceeded, ...), or an
       uploaded file failed validation (files upload)
  {EXIT_AUTH}    authentication or permission error (401, 403)
  {EXIT_NOT_FOUND}    no such job, file, checkpoint or model (404)
  {EXIT_CONNECTION}    the service could not be reached (connection error or timeout)
  {EXIT_SERVER}    the service failed (5xx), or a download was corrupt, cut short or unsafe
  {EXIT_WAIT_TIMEOUT}    wait --timeout expired (the job keeps running)
  {EXIT_PAUSED}    the job is paused (wait / create --wait with --stop-on-pause)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C; the job keeps running)
"""


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an error (see EXIT_CODES_HELP)."""
    if isinstance(exc, WaitTimeoutError):
        return EXIT_WAIT_TIMEOUT
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return EXIT_AUTH
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, (InternalServerError, ArchiveError)):
        return EXIT_SERVER
    if isinstance(exc, APIStatusError):
        return EXIT_REJECTED
    if isinstance(exc, APIConnectionError):
        return EXIT_CONNECTION
    return EXIT_USAGE


# ---- progress display ------------------------------------------------------------------------------------


class _PlainBar:
    """A dependency-free progress bar: redrawn in place on a terminal, one line per 10 % otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_decile = -1

    def update(self, job: TuningJob) -> None:
        m = job.metrics
        if m is None:
            return
        width = 30
        filled = round(m.progress * width)
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{bar}] {m.progress * 100:5.1f}% {_describe(job)}"
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(100))
            self.stream.flush()
        else:
            decile = int(m.progress * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(line + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class _TqdmBar:
    def __init__(self, tqdm: Any, stream: TextIO) -> None:
        self._tqdm = tqdm
        self._stream = stream
        self._bar: Any = None

    def update(self, job: TuningJob) -> None:
        m = job.metrics
        if m is None:
            return
        if self._bar is None:
            self._bar = self._tqdm(
                total=m.total_steps or 100, unit="step", file=self._stream, dynamic_ncols=True
            )
        if m.total_steps:
            self._bar.total = m.total_steps
            self._bar.n = m.current_step or 0
        else:
            self._bar.n = int(m.progress * 100)
        self._bar.set_postfix_str(_describe(job, steps=False), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _progress_bar(stream: TextIO) -> _PlainBar | _TqdmBar:
    try:
        from tqdm import tqdm  # optional: used when installed
    except ImportError:
        return _PlainBar(stream)
    return _TqdmBar(tqdm, stream)


def _describe(job: TuningJob, *, steps: bool = True) -> str:
    m = job.metrics
    if m is None:
        return job.status
    parts = []
    if steps and m.total_steps:
        parts.append(f"step {m.current_step or 0}/{m.total_steps}")
    if m.total_epochs and m.current_epoch is not None:
        parts.append(f"epoch {m.current_epoch}/{m.total_epochs}")
    if m.train_loss is not None:
        parts.append(f"loss {m.train_loss:.4f}")
    parts += _reward_parts(m.rewards_margin, m.rewards_accuracy)  # a preference job's
    if m.eta_seconds is not None and not job.is_terminal:
        parts.append(f"eta {m.eta_seconds:.0f}s")
    return " | ".join(parts)


# ---- output ----------------------------------------------------------------------------------------------


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _fmt_time(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _print_estimate(est: TuningEstimate) -> None:
    mem = est.memory
    seconds = (
        f"~{est.estimated_seconds:,.0f} s (from {est.based_on_jobs} past jobs)"
        if est.estimated_seconds is not None
        else "unknown (this service has not trained this model shape on this device yet)"
    )
    auto = ", ".join(f"{k}={v}" for k, v in est.resolved_auto.items()) or "none"
    examples = f"{est.num_examples:,} ({est.truncated_examples} truncated, {est.dropped_examples} dropped)"
    batches = f"{est.micro_batch_tokens:,} token slots each, padding efficiency {est.padding_efficiency:.1%}"
    checkpointing = "on" if est.gradient_checkpointing else "off"
    fits = "fits" if mem.fits else "DOES NOT FIT"
    how = ", ".join(x for x in (est.method, est.adapter) if x)
    rows = [
        ("model", est.model + (f" ({how})" if how else "")),
        ("examples", examples),
        ("tokens", f"{est.num_tokens:,} ({est.trainable_tokens:,} trained)"),
        ("steps", f"{est.total_steps:,} ({est.total_epochs} epochs of {est.steps_per_epoch})"),
        ("auto", auto),
        ("batches", batches),
        ("attention", f"{est.attn_implementation}, gradient checkpointing {checkpointing}"),
        ("device", f"{est.device} x {est.num_processes}"),
        ("memory", f"{mem.peak_mb:,} MiB peak of {mem.device_mb:,} MiB: {fits}"),
        ("time", seconds),
    ]
    for name, value in rows:
        print(f"{name + ':':<11}{value}")


def _print_job(job: TuningJob) -> None:
    rows: list[tuple[str, Any]] = [
        ("id", job.id),
        ("status", job.status),
        ("model", job.model),
        ("training_file", job.training_file),
        ("validation_file", job.validation_file),
        ("method", job.method or None),
        ("adapter", job.adapter or None),
        ("from_checkpoint", job.from_checkpoint),
        ("hyperparameters", json.dumps(job.hyperparameters.to_dict())),
        ("integrations", _describe_integrations(job) or None),
        ("priority", job.priority or None),
        ("max_runtime", f"{job.max_runtime_seconds}s" if job.max_runtime_seconds is not None else None),
        ("auto_retry", f"{job.retries}/{job.auto_retry} used" if job.auto_retry or job.retries else None),
        ("created_at", _fmt_time(job.created_at)),
        ("started_at", _fmt_time(job.started_at)),
        ("finished_at", _fmt_time(job.finished_at)),
        ("duration", f"{job.duration:.1f}s" if job.duration is not None else None),
        ("queue_position", job.queue_position),
        ("progress", f"{job.metrics.progress * 100:.1f}% ({_describe(job)})" if job.metrics else None),
        ("fine_tuned_model", job.fine_tuned_model),
        ("adapter_path", job.adapter_path),
    ]
    if job.error is not None:
        rows.append(("error", str(job.error)))
    for key, value in rows:
        if value is not None:
            print(f"{key:<17}{value}")
    if job.error is not None and job.error.log_tail:
        print("log tail:")
        for line in job.error.log_tail:
            print(f"  {line}")


# A tracker's settings as `jobs get` shows them: (field, label).
_TRACKER_SETTINGS = (
    ("project", "project"),
    ("name", "run"),
    ("entity", "entity"),
    ("tags", "tags"),
    ("experiment", "experiment"),
    ("tracking_uri", "at"),
)


def _describe_integrations(job: TuningJob) -> str:
    """The job's trackers in a line: ``wandb (project p, run r), mlflow (experiment e), tensorboard``."""
    parts = []
    for integration in job.integrations:
        kind = str(integration.get("type", "?"))
        settings = integration.get(kind)
        details = []
        if isinstance(settings, Mapping):
            for key, label in _TRACKER_SETTINGS:
                value = settings.get(key)
                if isinstance(value, list):
                    value = ",".join(map(str, value))
                if value:
                    details.append(f"{label} {value}")
        parts.append(kind + (f" ({', '.join(details)})" if details else ""))
    return ", ".join(parts)


def _print_usage(usage: KeyUsage) -> None:
    def limit(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    lim = usage.limits
    print(f"key      {usage.key_id}")
    print(f"window   the last {usage.window_days:g} days (GPU hours)")
    _cli_artifacts._table(
        ("", "USED", "LIMIT"),
        [
            ("running jobs", usage.running_jobs, limit(lim.max_running_jobs)),
            ("queued jobs", usage.queued_jobs, limit(lim.max_queued_jobs)),
            ("GPU hours", f"{usage.gpu_hours:.2f}", limit(lim.max_gpu_hours)),
        ],
    )


def _print_table(jobs: list[TuningJob]) -> None:
    header = ("ID", "STATUS", "MODEL", "CREATED", "PROGRESS", "FINE-TUNED MODEL")
    rows = [
        (
            j.id,
            j.status,
            j.model,
            _fmt_time(j.created_at),
            f"{j.metrics.progress * 100:.0f}%" if j.metrics else "-",
            j.fine_tuned_model or "-",
        )
        for j in jobs
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# ---- commands --------------------------------------------------------------------------------------------


def _parse_kv(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)  # numbers, booleans, lists; anything else stays a string
        except ValueError:
            out[key] = raw
    return out


def _integrations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The create's `integrations` from the tracker flags (only the settings given are sent)."""
    out: list[dict[str, Any]] = []
    wandb = {
        "project": args.wandb_project,
        "name": args.wandb_name,
        "entity": args.wandb_entity,
        "tags": args.wandb_tag,
    }
    if args.wandb_project is not None:
        out.append({"type": "wandb", "wandb": {k: v for k, v in wandb.items() if v is not None}})
    elif any(v is not None for v in wandb.values()):
        raise argparse.ArgumentTypeError("--wandb-name, --wandb-entity and --wandb-tag need --wandb-project")
    mlflow = {"tracking_uri": args.mlflow_tracking_uri, "experiment": args.mlflow_experiment}
    if args.mlflow or any(v is not None for v in mlflow.values()):
        out.append({"type": "mlflow", "mlflow": {k: v for k, v in mlflow.items() if v is not None}})
    if args.tensorboard:
        out.append({"type": "tensorboard"})
    return out


def _wait(client: TuningClient, job_id: str, args: argparse.Namespace) -> int:
    bar = None if args.no_progress else _progress_bar(sys.stderr)
    try:
        job = client.tunings.wait(
            job_id,
            on_progress=bar.update if bar else None,
            poll_interval=args.poll_interval,
            timeout=args.wait_timeout,
            stop_on_pause=args.stop_on_pause,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        _print_json(job.to_dict())
    else:
        _print_job(job)
    if job.status == "paused":
        return EXIT_PAUSED
    return EXIT_OK if job.is_successful else EXIT_JOB_FAILED


def _run(args: argparse.Namespace, client: TuningClient) -> int:
    cmd = args.command
    if cmd == "health":
        health = client.health_check()
        if args.json:
            _print_json(health)
        else:
            for key, value in health.items():
                print(f"{key}: {value}")
        return EXIT_OK
    if cmd == "usage":
        usage = client.usage.retrieve()
        if args.json:
            _print_json(usage.to_dict())
        else:
            _print_usage(usage)
        return EXIT_OK
    if cmd == "files":
        return _cli_artifacts.run_files(args, client)
    if cmd == "models":
        return _cli_chat.run_models(args, client)
    if cmd == "chat":
        return _cli_chat.run_chat(args, client)

    action = args.action
    if action in _cli_artifacts.JOB_ACTIONS:
        return _cli_artifacts.run_job_action(args, client, _print_job)
    if action == "create":
        request: dict[str, Any] = dict(
            model=args.model,
            training_file=args.training_file,
            hyperparameters=args.hp or None,
            validation_file=args.validation_file,
            method=args.method,
            adapter=args.adapter,
            from_checkpoint=args.from_checkpoint,
            suffix=args.suffix,
            seed=args.seed,
            metadata=args.metadata or None,
            resume_on_restart=True if args.resume_on_restart else None,
            num_gpus=args.num_gpus,
            distributed=args.distributed,
            webhook_url=args.webhook_url,
            webhook_events=args.webhook_event or None,
            integrations=args.integrations or None,
            priority=args.priority,
            max_runtime_seconds=args.max_runtime_seconds,
            auto_retry=args.auto_retry,
            idempotency_key=args.idempotency_key,
        )
        if args.dry_run:
            estimate = client.tunings.create(**request, dry_run=True)
            if args.json:
                _print_json(dict(estimate.raw))
            else:
                _print_estimate(estimate)
            return EXIT_OK
        job = client.tunings.create(**request)
        if args.wait:
            if not args.json:
                print(f"created {job.id}; waiting for it to finish (Ctrl-C stops waiting, not the job)")
            return _wait(client, job.id, args)
        if args.json:
            _print_json(job.to_dict())
        else:
            _print_job(job)
        return EXIT_OK
    if action == "list":
        jobs: list[TuningJob] = []
        for job in client.tunings.list(
            status=args.status, limit=min(args.limit, 100) if args.limit else None
        ):
            jobs.append(job)
            if args.limit and len(jobs) >= args.limit:
                break
        if args.json:
            _print_json([j.to_dict() for j in jobs])
        elif jobs:
            _print_table(jobs)
        else:
            print("no jobs")
        return EXIT_OK
    if action in ("get", "cancel"):
        job = client.tunings.get(args.id) if action == "get" else client.tunings.cancel(args.id)
        if args.json:
            _print_json(job.to_dict())
        else:
            _print_job(job)
        return EXIT_OK
    if action == "delete":
        deleted = client.tunings.delete(args.id)
        if args.json:
            _print_json({"id": deleted.id, "object": deleted.object, "deleted": deleted.deleted})
        else:
            print(f"deleted {deleted.id}")
        return EXIT_OK
    if action == "logs":
        for rec in client.tunings.stream_logs(args.id, follow=args.follow, after=args.after):
            if args.json:
                print(json.dumps(rec.to_dict()), flush=True)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(rec.time)) if rec.time else "--:--:--"
                print(f"{stamp} {rec.seq:>5} {rec.format()}", flush=True)
        return EXIT_OK
    if action == "wait":
        return _wait(client, args.id, args)
    raise AssertionError(f"unhandled command {cmd} {action}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuning",
        description="Submit, watch and manage fine-tuning jobs on a tuning service.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tuning {__version__}")
    parser.add_argument(
        "--base-url", help="service address (default: $TUNING_BASE_URL or http://localhost:8000)"
    )
    parser.add_argument("--api-key", help="API key (default: $TUNING_API_KEY)")
    parser.add_argument(
        "--request-timeout",
        dest="http_timeout",
        type=float,
        default=60.0,
        help="HTTP timeout in seconds (default 60)",
    )
    parser.add_argument("--max-retries", type=int, default=2, help="retries of failed requests (default 2)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output on stdout")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("health", help="check that the service is up")
    sub.add_parser("usage", help="this API key's running and queued jobs, GPU hours and limits")

    jobs = sub.add_parser(
        "jobs",
        help="manage fine-tuning jobs",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    acts = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")

    def waiting(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--timeout",
            dest="wait_timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="stop waiting after this many seconds (exit 8)",
        )
        p.add_argument(
            "--poll-interval",
            type=float,
            default=2.0,
            metavar="SECONDS",
            help="seconds between polls if polling",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument(
            "--stop-on-pause", action="store_true", help="stop waiting when the job is paused (exit 9)"
        )

    create = acts.add_parser("create", help="create a job")
    create.add_argument("--model", required=True, help="base model (e.g. tiny-llama)")
    create.add_argument("--training-file", required=True, help="JSONL file under the service's files root")
    create.add_argument("--validation-file")
    create.add_argument(
        "--method",
        choices=["sft", "dpo", "orpo", "simpo", "qlora", "lora"],
        help="what the adapter is trained for: sft (default), or dpo, orpo, simpo on chosen/rejected pairs "
        "(a preference data file); qlora and lora (the old values) mean sft with that adapter",
    )
    create.add_argument(
        "--adapter", choices=["qlora", "lora"], help="qlora (a 4-bit base; the default) or lora"
    )
    create.add_argument(
        "--from-checkpoint",
        metavar="REF",
        help="start from another job's adapter: JOB_ID (its final adapter), JOB_ID:STEP (a checkpoint) or "
        "ftckpt-JOB-STEP; same base model, its LoRA shape",
    )
    create.add_argument("--suffix")
    create.add_argument("--seed", type=int)
    create.add_argument(
        "--hp",
        action="append",
        metavar="KEY=VALUE",
        help="a hyperparameter (repeatable), e.g. epochs=3, batch_size=auto, dpo_beta=0.1",
    )
    create.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="metadata (repeatable)")
    create.add_argument("--idempotency-key", help="makes the create safe to repeat")
    create.add_argument(
        "--webhook-url", help="http(s) URL the service POSTs a signed event to when the job ends"
    )
    create.add_argument(
        "--webhook-event",
        action="append",
        metavar="EVENT",
        help="event to send to --webhook-url (repeatable): job.succeeded, job.failed, job.cancelled, "
        "job.checkpoint; default: the three terminal ones",
    )
    create.add_argument(
        "--resume-on-restart",
        action="store_true",
        help="if the service restarts and the trainer is gone, continue from the newest checkpoint "
        "(set --hp save_steps=N)",
    )
    create.add_argument(
        "--num-gpus", type=int, metavar="N", help="GPUs for the job, one training process each (default 1)"
    )
    create.add_argument(
        "--distributed", choices=("ddp", "fsdp"), help="how several GPUs share the work (default ddp)"
    )
    create.add_argument(
        "--priority",
        type=int,
        metavar="N",
        help="the queue's order, -100..100 (default 0): higher runs first",
    )
    create.add_argument(
        "--max-runtime-seconds",
        type=int,
        metavar="N",
        help="training time allowed; past it the job checkpoints and fails with deadline_exceeded (resume "
        "continues it). Default: the service's",
    )
    create.add_argument(
        "--auto-retry",
        type=int,
        metavar="N",
        help="restart from the newest checkpoint up to N times (0..10) after an infrastructure failure "
        "(crash, kill, out of memory, service restart)",
    )
    create.add_argument(
        "--tensorboard",
        action="store_true",
        help="write TensorBoard event files (jobs download ID DIR --artifact tensorboard)",
    )
    create.add_argument("--wandb-project", metavar="P", help="log to Weights & Biases, into this project")
    create.add_argument("--wandb-name", metavar="NAME", help="the W&B run's name (default: the job id)")
    create.add_argument("--wandb-entity", metavar="E", help="the W&B team or user")
    create.add_argument("--wandb-tag", action="append", metavar="T", help="a W&B tag (repeatable)")
    create.add_argument("--mlflow", action="store_true", help="log to MLflow")
    create.add_argument(
        "--mlflow-tracking-uri",
        metavar="U",
        help="an MLflow tracking server, http(s)://... or databricks (default: the service's); implies "
        "--mlflow",
    )
    create.add_argument(
        "--mlflow-experiment", metavar="E", help="the MLflow experiment (default tuning); implies --mlflow"
    )
    create.add_argument("--wait", action="store_true", help="wait for the job to end, with a progress bar")
    create.add_argument(
        "--dry-run",
        action="store_true",
        help="create no job: show what it would do (examples, tokens, steps, padding efficiency, peak "
        "memory per GPU and whether it fits, and the time where the service can tell)",
    )
    waiting(create)

    lst = acts.add_parser("list", help="list jobs, newest first")
    lst.add_argument("--status", help="only jobs in this status")
    lst.add_argument("--limit", type=int, default=20, help="show at most N jobs (0: all; default 20)")

    for name, text in (("get", "show a job"), ("cancel", "cancel a job"), ("delete", "delete an ended job")):
        acts.add_parser(name, help=text).add_argument("id")

    logs = acts.add_parser("logs", help="print a job's log records")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming until the job ends")
    logs.add_argument("--after", type=int, default=None, help="start after this sequence number")

    wait = acts.add_parser("wait", help="wait for a job to end, with a progress bar")
    wait.add_argument("id")
    waiting(wait)

    _cli_artifacts.add_job_commands(acts)
    file_leaves = _cli_artifacts.add_file_commands(sub)
    model_leaves = _cli_chat.add_model_commands(sub)
    chat = _cli_chat.add_chat_command(sub)

    # `--json` is accepted after the command too (`tuning jobs list --json`).
    leaves = [
        sub.choices["health"],
        sub.choices["usage"],
        *acts.choices.values(),
        *file_leaves,
        *model_leaves,
        chat,
    ]
    for leaf in leaves:
        leaf.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "action", None) == "create":
            args.hp = _parse_kv(args.hp, "--hp")
            args.metadata = _parse_kv(args.metadata, "--metadata")
            args.integrations = _integrations(args)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    try:
        with TuningClient(
            api_key=args.api_key,
            base_url=args.base_url,
            timeout=args.http_timeout,
            max_retries=args.max_retries,
        ) as client:
            return _run(args, client)
    except KeyboardInterrupt:
        print("\ninterrupted; a job that was running keeps running", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `tuning jobs logs ID | head`: the reader left. Point stdout at /dev/null so that the interpreter's
        # final flush does not complain, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except TuningError as exc:
        if args.json:
            err: dict[str, Any] = {
                "type": type(exc).__name__,
                "message": exc.message,
                "status_code": exc.status_code,
                "code": exc.code,
                "param": exc.param,
                "request_id": exc.request_id,
            }
            if isinstance(exc, WaitTimeoutError):
                err["job"] = exc.job.to_dict()
            _print_json({"error": err})
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except OSError as exc:
        # Local files (after TuningError: WaitTimeoutError is a TimeoutError, an OSError): an upload path
        # that does not exist, a download folder that is not empty, ...
        if args.json:
            _print_json({"error": {"type": type(exc).__name__, "message": str(exc)}})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""Entry point: `accelerate launch [accelerate flags] -m tuning_trainer --config JOB.json` (or flags).

Order matters: signals are caught first, then the config and the data are validated and the model is located
with the standard library alone, and only then is the ML stack imported. A bad job therefore fails in well
under a second, writes one `failed` record and loads no model.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .config import ConfigError
from .data import summarise_job_files
from .errors import (
    EXIT_USER_ERROR,
    INVALID_CONFIG,
    OUT_OF_MEMORY,
    TrainerError,
    classify,
    suggested_batch_size,
)
from .events import EventWriter
from .secrets import load_secrets
from .signals import StopFlag
from .trackers import Trackers


def _quiet_environment() -> None:
    # The service streams stdout/stderr line by line: no progress bars, no carriage-return redraws.
    for name, value in (
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TQDM_DISABLE", "1"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("BITSANDBYTES_NOWELCOME", "1"),
    ):
        os.environ.setdefault(name, value)
    # transformers 5 deprecation notices triggered inside peft (gradient checkpointing renames): noise in
    # every job's log that the user can do nothing about.
    warnings.filterwarnings("ignore", r".* is deprecated and will be removed in v6", FutureWarning)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def _guess_output_dir(argv: list[str]) -> str | None:
    """Best effort, for a config that failed validation: where should the `failed` record go?"""
    for i, arg in enumerate(argv):
        if arg.startswith("--output-dir="):
            return arg.split("=", 1)[1]
        if arg == "--output-dir" and i + 1 < len(argv):
            return argv[i + 1]
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            try:
                value = json.loads(Path(path).read_text(encoding="utf-8")).get("output_dir")
            except (OSError, ValueError, AttributeError):
                return None
            return value if isinstance(value, str) and value else None
    return None


def run(argv: list[str]) -> int:
    stop = StopFlag().install()
    try:
        from .cli import parse_args

        cfg, _ = parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        out = _guess_output_dir(argv)
        if out and _is_main_process():
            err = TrainerError(INVALID_CONFIG, exc.message, EXIT_USER_ERROR, extra={"param": exc.param})
            if exc.code != INVALID_CONFIG:
                err.extra["config_code"] = exc.code
            EventWriter(Path(out) / "events.jsonl").write("failed", **err.record())
        return EXIT_USER_ERROR

    # Before anything reads a credential (huggingface_hub, wandb): the key's own HF token and W&B key.
    load_secrets(cfg.output_dir)
    events = EventWriter(Path(cfg.output_dir) / "events.jsonl", enabled=_is_main_process())
    # The job's experiment trackers listen to the records (main process only; nothing imported yet).
    trackers = Trackers.attach(cfg, events)
    recipe: Any = None
    try:
        train_summary, eval_summary = summarise_job_files(cfg)
        from .modelling import resolve_model

        source = resolve_model(cfg.model)
        if cfg.resume_from:
            from .checkpoint import check_resume_dir

            check_resume_dir(cfg.resume_from)

        from .recipe import Recipe  # the first heavy import

        recipe = Recipe(
            cfg, events, source=source, train_summary=train_summary, eval_summary=eval_summary, stop=stop
        )
        _RETAINED.append(recipe)  # never freed in a multi-process run: see main()
        return recipe.run()
    except BaseException as exc:  # every failure becomes one `failed` record and an exit code
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        err = classify(exc)
        if err.code == OUT_OF_MEMORY:
            # What the service retries the job with: half the micro-batch the run resolved ("auto" included).
            batch_size = (recipe.hp if recipe is not None else cfg.hyperparameters).batch_size
            err.extra["suggested_batch_size"] = suggested_batch_size(batch_size)
        record: dict[str, Any] = err.record()
        events.write("failed", **record)
        detail = f"/{err.extra['data_code']}" if err.extra.get("data_code") else ""
        print(f"error [{err.code}{detail}]: {err.message}", file=sys.stderr, flush=True)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr, flush=True)
        if err.code not in ("invalid_config", "invalid_data", "model_not_found", "model_unavailable"):
            import traceback

            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return err.exit_code
    finally:
        if trackers is not None:
            trackers.close()
        events.close()


# The recipe of this process's run, kept alive until the process exits.
_RETAINED: list[Any] = []


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    code = run(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # Everything is written, flushed and fsynced by now. Freeing a DDP model over gloo can deadlock
        # (torch 2.13, measured here: about 1 run in 5 on 2 busy cores): the process group's destructor,
        # holding the GIL, joins gloo's worker thread, which needs the GIL to drop the tensors of the last
        # finished collective. The launcher would then wait for that rank forever, and the job never end.
        # So a process of a multi-process run leaves without running destructors.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

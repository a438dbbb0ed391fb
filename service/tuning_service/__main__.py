"""Command line: serve the API, or manage API keys.

    python -m tuning_service [--host H] [--port P] [--workers N]      # uvicorn tuning_service.app:app
    python -m tuning_service keys create --name NAME [--max-running-jobs N] [--max-queued-jobs N]
                                         [--max-gpu-hours H] [--json]   # prints a new key, once
    python -m tuning_service keys update KEY_ID_OR_NAME [--max-running-jobs N|none] [...]
    python -m tuning_service keys set-integration KEY_ID_OR_NAME [--wandb-api-key K|-] [--hf-token T|-]
    python -m tuning_service keys list
    python -m tuning_service keys revoke KEY_ID_OR_NAME
    python -m tuning_service keys set-webhook KEY_ID_OR_NAME [--url URL | --clear] [--rotate-secret]

`tuning-service` (the console script) is the same as `python -m tuning_service`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .settings import Settings, describe_error


def load_settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:  # a malformed TUNING_* variable: say which, without a traceback
        raise SystemExit(f"tuning-service: {describe_error(exc)}") from None


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuning_service",
        description="Run the tuning service API (uvicorn). Settings come from TUNING_* environment "
        "variables; "
        "see docs/service.md. Key management: 'python -m tuning_service keys --help'.",
    )
    p.add_argument(
        "--host",
        default=os.environ.get("HOST", "127.0.0.1"),
        help="interface to bind (default 127.0.0.1; 0.0.0.0 to serve the network)",
    )
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT") or 8000), help="port (default $PORT or 8000)"
    )
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--log-level", default=None, help="override TUNING_LOG_LEVEL (debug, info, warning...)")
    p.add_argument("--root-path", default="", help="URL prefix when served behind a proxy under a sub-path")
    return p


def _keys_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuning_service keys", description="Manage API keys.")
    sub = p.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a key and print it (shown once; only its hash is stored)")
    create.add_argument("--name", required=True, help="a label for the key (e.g. the team or user)")
    create.add_argument("--webhook-url", default=None, help="default webhook for this key's jobs")
    _limit_flags(create, lifting=False)
    create.add_argument(
        "--json", action="store_true", help='print {"id", "key", "name", ...} as JSON on stdout (for scripts)'
    )
    update = sub.add_parser("update", help="change a key's limits ('none' lifts one)")
    update.add_argument("key", help="key id (key_...) or name")
    _limit_flags(update, lifting=True)
    cred = sub.add_parser(
        "set-integration",
        help="set (or clear) the credentials this key's trainers get: a W&B API key, a Hugging Face token "
        "(never shown again)",
    )
    cred.add_argument("key", help="key id (key_...) or name")
    for flag, what in (
        ("--wandb-api-key", "W&B API key"),
        ("--hf-token", "Hugging Face token (gated models)"),
    ):
        group = cred.add_mutually_exclusive_group()
        group.add_argument(flag, default=None, metavar="VALUE", help=f"the {what}; '-' reads it from stdin")
        group.add_argument(f"--clear-{flag[2:]}", action="store_true", help=f"remove the {what}")
    hook = sub.add_parser(
        "set-webhook",
        help="set a key's default webhook URL and/or make its signing secret (printed once)",
    )
    hook.add_argument("key", help="key id (key_...) or name")
    target = hook.add_mutually_exclusive_group()
    target.add_argument("--url", default=None, help="default webhook for the key's jobs (http/https)")
    target.add_argument("--clear", action="store_true", help="remove the key's default webhook URL")
    hook.add_argument("--rotate-secret", action="store_true", help="replace the signing secret")
    lst = sub.add_parser("list", help="list keys (never their values)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    revoke = sub.add_parser("revoke", help="revoke a key by id or name; it stops working at once")
    revoke.add_argument("key", help="key id (key_...) or name")
    return p


def serve(argv: Sequence[str]) -> int:
    args = _serve_parser().parse_args(argv)
    if args.workers < 1:
        print("--workers must be >= 1", file=sys.stderr)
        return 2
    if args.log_level:
        os.environ["TUNING_LOG_LEVEL"] = args.log_level
    settings = load_settings()
    import uvicorn

    uvicorn.run(
        "tuning_service.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        root_path=args.root_path,
        log_level=settings.log_level.lower(),
        # The app logs every request itself (with its request id) to stderr and tuning_service.log.
        access_log=False,
        # Open log streams (SSE) would otherwise hold a graceful shutdown forever.
        timeout_graceful_shutdown=5,
    )
    return 0


# The limits of a key (storage/usage.py enforces them): flag -> (column, type).
_LIMIT_FLAGS = {
    "--max-running-jobs": ("max_running_jobs", int, "jobs of this key running at once (more wait queued)"),
    "--max-queued-jobs": ("max_queued_jobs", int, "queued jobs of this key; a create beyond: 429"),
    "--max-gpu-hours": ("max_gpu_hours", float, "GPU hours over TUNING_QUOTA_WINDOW_DAYS; then: 429"),
}


def _limit_flags(p: argparse.ArgumentParser, *, lifting: bool) -> None:
    for flag, (column, kind, what) in _LIMIT_FLAGS.items():

        def parse(text: str, kind: Any = kind, flag: str = flag) -> Any:
            if lifting and text.lower() == "none":
                return None
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{flag} takes a number{' or none' if lifting else ''}"
                ) from None
            if value < 0 or value != value or value == float("inf"):
                raise argparse.ArgumentTypeError(f"{flag} must be a finite number >= 0")
            return value

        p.add_argument(flag, dest=column, type=parse, default=argparse.SUPPRESS, metavar="N", help=what)


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    return {column: getattr(args, column) for column, _, _ in _LIMIT_FLAGS.values() if hasattr(args, column)}


def _secret_value(value: str) -> str:
    """A credential given as a flag, or '-' for stdin (keeps it out of the shell history and `ps`)."""
    text = sys.stdin.readline().strip() if value == "-" else value.strip()
    if not text:
        raise SystemExit("tuning-service: an empty credential; use --clear-... to remove one")
    return text


async def _with_manager(fn: Any) -> Any:
    # Only the key store is needed: the manager is built without start() (no recovery, no scheduler), so this
    # is safe while a service is running on the same data directory.
    from .engine.facade import JobManager
    from .storage.store import Store

    settings = load_settings()
    settings.ensure_dirs()
    store = Store(settings.db_path)
    await store.open()
    try:
        return await fn(JobManager(settings, store))
    finally:
        await store.close()


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _check_webhook_url(url: str | None) -> str | None:
    """The same rules as a job's webhook_url: its form (the schema's) and its address."""
    from pydantic import TypeAdapter, ValidationError

    from tuning_trainer.schema import first_problem

    from .errors import APIError
    from .schema.jobs import WebhookUrl
    from .webhooks.policy import UrlPolicy

    if url is None:
        return None
    adapter: TypeAdapter[str] = TypeAdapter(WebhookUrl)
    try:
        adapter.validate_python(url)
        return UrlPolicy(load_settings().webhook_allow_networks).check_address(url, "--url")
    except ValidationError as exc:
        problem = first_problem(exc, adapter.json_schema(), prefix="--url")
        raise SystemExit(f"tuning-service: {problem.message}") from None
    except APIError as exc:
        raise SystemExit(f"tuning-service: {exc.message}") from None


def _print_secret(secret: str | None) -> None:
    if secret:
        print(
            f"Webhook signing secret: {secret}\n(verify deliveries with "
            "tuning_sdk.webhooks.verify_signature; shown once: 'keys set-webhook KEY --rotate-secret' "
            "makes a new one, and the old one keeps signing too for 24 h)",
            file=sys.stderr,
        )


def keys(argv: Sequence[str]) -> int:
    args = _keys_parser().parse_args(argv)
    if args.action == "create":
        name = args.name.strip()
        if not name or name.startswith("env-"):
            # "env-<n>" is how keys from TUNING_API_KEYS are named in the key store.
            print("--name must be non-empty and must not start with 'env-'", file=sys.stderr)
            return 2
        url = _check_webhook_url(args.webhook_url)

        limits = _limits(args)

        async def create(m: Any) -> tuple[str, str, str | None]:
            key_id, plaintext = await m.create_key(name, limits)
            # Every new key gets its webhook signing secret now, so it is shown with the key.
            found = await m.set_key_webhook(key_id, url=url, clear=False, rotate=False)
            return key_id, plaintext, found[1] if found else None

        key_id, plaintext, secret = asyncio.run(_with_manager(create))
        if args.json:
            out = {"id": key_id, "key": plaintext, "name": name, "webhook_url": url, "webhook_secret": secret}
            out.update({column: limits.get(column) for column, _, _ in _LIMIT_FLAGS.values()})
            print(json.dumps(out))
            return 0
        print(
            f"Created API key {key_id} ({name}). Copy it now: it is not stored and cannot be shown again.",
            file=sys.stderr,
        )
        _print_secret(secret)
        print(plaintext)
        return 0
    if args.action == "set-webhook":
        url = _check_webhook_url(args.url)
        found = asyncio.run(
            _with_manager(
                lambda m: m.set_key_webhook(args.key, url=url, clear=args.clear, rotate=args.rotate_secret)
            )
        )
        if found is None:
            print(f"No single active key with id or name {args.key!r}", file=sys.stderr)
            return 1
        key_id, secret = found
        what = f"webhook URL {url}" if url else "no webhook URL" if args.clear else "webhook settings"
        print(f"Updated {key_id}: {what}", file=sys.stderr)
        _print_secret(secret)
        return 0
    if args.action == "update":
        limits = _limits(args)
        if not limits:
            print(
                "Nothing to change: give --max-running-jobs, --max-queued-jobs or --max-gpu-hours",
                file=sys.stderr,
            )
            return 2
        found_id = asyncio.run(_with_manager(lambda m: m.update_key_limits(args.key, limits)))
        if found_id is None:
            print(f"No single active key with id or name {args.key!r}", file=sys.stderr)
            return 1
        said = ", ".join(f"{k} = {'none' if v is None else f'{v:g}'}" for k, v in limits.items())
        print(f"Updated {found_id}: {said}", file=sys.stderr)
        return 0
    if args.action == "set-integration":
        changes: dict[str, str | None] = {}
        for column in ("wandb_api_key", "hf_token"):
            if getattr(args, f"clear_{column}"):
                changes[column] = None
            elif getattr(args, column) is not None:
                changes[column] = _secret_value(getattr(args, column))
        if not changes:
            print(
                "Nothing to change: give --wandb-api-key, --hf-token or a --clear-... flag", file=sys.stderr
            )
            return 2
        found_id = asyncio.run(_with_manager(lambda m: m.set_key_credentials(args.key, changes)))
        if found_id is None:
            print(f"No single active key with id or name {args.key!r}", file=sys.stderr)
            return 1
        said = ", ".join(f"{k} {'removed' if v is None else 'set'}" for k, v in changes.items())
        print(f"Updated {found_id}: {said} (its next runs get it)", file=sys.stderr)
        return 0
    if args.action == "list":

        async def listing(m: Any) -> list[dict[str, Any]]:
            return await m.list_keys()  # never the secrets: only whether there is one

        rows = asyncio.run(_with_manager(listing))
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print("No API keys. Create one with: python -m tuning_service keys create --name NAME")
            return 0
        print(
            f"{'ID':<22} {'NAME':<24} {'CREATED':<20} {'STATUS':<28} {'LIMITS':<24} {'CREDENTIALS':<12} "
            "WEBHOOK"
        )
        for r in rows:
            status = f"revoked {_fmt_time(r.get('revoked_at'))}" if r.get("revoked_at") else "active"
            hook = r.get("webhook_url") or ("-" if r.get("has_webhook_secret") else "- (no secret)")
            shown = "/".join("-" if r.get(c) is None else f"{r[c]:g}" for c, _, _ in _LIMIT_FLAGS.values())
            creds = ",".join(
                n for c, n in (("wandb_api_key", "wandb"), ("hf_token", "hf")) if r.get(f"has_{c}")
            )
            print(
                f"{r['id']:<22} {str(r['name'])[:24]:<24} {_fmt_time(r.get('created_at')):<20} {status:<28} "
                f"{shown:<24} {creds or '-':<12} {hook}"
            )
        print("LIMITS: running/queued/GPU hours ('-': none)", file=sys.stderr)
        return 0
    revoked = asyncio.run(_with_manager(lambda m: m.revoke_key(args.key)))
    if not revoked:
        print(f"No active key with id or name {args.key!r}", file=sys.stderr)
        return 1
    print(f"Revoked {args.key}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "keys":
        return keys(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())

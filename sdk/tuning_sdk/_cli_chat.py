"""`tuning chat MODEL`: talk to a base model or a fine-tune from the terminal, and `tuning models` to find
them (`cli.py` holds the trunk).

tuning models list | get ID | delete ID
tuning chat MODEL [--system TEXT] [--temperature T] [--max-tokens N] [--seed N] [--compare-base]
tuning chat MODEL --prompt TEXT [--json]

Interactive: each line read from stdin is a user message (prompt "> " on a terminal); the answer streams to
stdout as it is generated and joins the conversation; ``/exit`` or end of input ends. ``--prompt`` answers
one message and exits. ``--compare-base`` answers with the fine-tune's base model too, each under a header.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from ._client import TuningClient
from ._errors import TuningError
from ._inference import Model

EXIT_INTERRUPTED = 130
EXIT_COMMANDS = ("/exit", "/quit")


def add_model_commands(sub: Any) -> list[argparse.ArgumentParser]:
    """Add ``tuning models ...``; returns the leaf parsers (they all take ``--json``)."""
    models = sub.add_parser("models", help="the models to chat with: base models and your fine-tunes")
    acts = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    acts.add_parser("list", help="list the base models and your fine-tunes")
    acts.add_parser("get", help="show a model").add_argument("id")
    acts.add_parser("delete", help="delete a fine-tune (it is no longer served)").add_argument("id")
    return list(acts.choices.values())


def _print_models(models: list[Model]) -> None:
    if not models:
        print("no models")
        return
    header = ("ID", "PARENT", "OWNED BY", "METHOD", "ADAPTER", "JOB")
    rows = [
        (m.id, m.parent or "-", m.owned_by, m.method or "-", m.adapter or "-", m.job_id or "-")
        for m in models
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def run_models(args: argparse.Namespace, client: TuningClient) -> int:
    action = args.action
    if action == "list":
        models = client.models.list()
        if args.json:
            _print_json([m.to_dict() for m in models])
        else:
            _print_models(models)
        return 0
    if action == "get":
        model = client.models.retrieve(args.id)
        if args.json:
            _print_json(model.to_dict())
        else:
            _print_models([model])
        return 0
    if action == "delete":
        deleted = client.models.delete(args.id)
        if args.json:
            _print_json({"id": deleted.id, "object": deleted.object, "deleted": deleted.deleted})
        else:
            print(f"deleted {deleted.id}")
        return 0
    raise AssertionError(f"unhandled models action {action}")


def add_chat_command(sub: Any) -> argparse.ArgumentParser:
    """Add ``tuning chat``; returns its parser (a leaf: it takes ``--json``)."""
    chat: argparse.ArgumentParser = sub.add_parser(
        "chat",
        help="chat with a model or a fine-tune (interactive, or --prompt once)",
        description="Chat with a model: each line of input is a message, the answer streams back; /exit or "
        "end of input ends. --prompt TEXT answers once and exits.",
    )
    chat.add_argument("model", metavar="MODEL", help="a base model or a fine-tune's id (tuning models list)")
    chat.add_argument("--prompt", help="answer this one message and exit")
    chat.add_argument("--system", help="a system message at the start of the conversation")
    chat.add_argument("--temperature", type=float, help="0..2 (0: the most likely token every time)")
    chat.add_argument("--max-tokens", type=int, metavar="N", help="most tokens per answer")
    chat.add_argument("--seed", type=int, help="the same seed gives the same answer")
    chat.add_argument(
        "--compare-base",
        action="store_true",
        help="for a fine-tune: answer with its base model too, then the fine-tune, each under a header",
    )
    return chat


class _Side:
    """One model of the conversation, with its own history (its own earlier answers)."""

    def __init__(self, model: str, label: str | None, system: str | None, shown: str | None = None) -> None:
        self.model = model
        self.label = label
        self.shown = shown or model
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {"temperature": args.temperature, "max_tokens": args.max_tokens, "seed": args.seed}


def _stream_answer(client: TuningClient, side: _Side, params: dict[str, Any], out: TextIO) -> str:
    """Stream `side`'s answer to its conversation to `out`; returns the whole answer. A partial answer cut by
    an error or Ctrl-C still ends its line, so what follows starts on a fresh one."""
    if side.label is not None:
        out.write(f"── {side.label} ({side.shown}) ──\n")
        out.flush()
    parts: list[str] = []
    try:
        with client.chat.completions.create(
            model=side.model, messages=side.messages, stream=True, **params
        ) as stream:
            for chunk in stream:
                text = chunk.text
                if text:
                    parts.append(text)
                    out.write(text)
                    out.flush()
    except BaseException:
        if parts:
            out.write("\n")
            out.flush()
        raise
    out.write("\n")
    out.flush()
    return "".join(parts)


def _sides(args: argparse.Namespace, client: TuningClient) -> list[_Side]:
    if not args.compare_base:
        return [_Side(args.model, None, args.system)]
    parent = client.models.retrieve(args.model).parent
    if not parent:
        raise TuningError(
            f"--compare-base needs a fine-tuned model: {args.model} has no base model (parent) to compare "
            "with"
        )
    # `<fine-tune>:base`: its base as it is served under it (a QLoRA fine-tune's 4-bit base), adapter off.
    base = _Side(f"{args.model}:base", "base", args.system, shown=parent)
    return [base, _Side(args.model, "tuned", args.system)]


def _turn(client: TuningClient, sides: list[_Side], text: str, params: dict[str, Any], out: TextIO) -> None:
    """One user message, answered by each side in turn (each sees its own earlier answers)."""
    kept = [len(side.messages) for side in sides]
    try:
        for side in sides:
            side.messages.append({"role": "user", "content": text})
            answer = _stream_answer(client, side, params, out)
            side.messages.append({"role": "assistant", "content": answer})
    except BaseException:
        # The turn did not happen, for any side: the next one starts from the same histories.
        for side, n in zip(sides, kept, strict=True):
            del side.messages[n:]
        raise


def _read_line(stdin: TextIO, tty: bool) -> str | None:
    if tty:
        try:
            return input("> ")
        except EOFError:  # Ctrl-D: end the prompt's line
            print()
            return None
    line = stdin.readline()
    return line.rstrip("\r\n") if line else None


def run_chat(args: argparse.Namespace, client: TuningClient) -> int:
    try:
        return _run(args, client)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, client: TuningClient) -> int:
    if args.json and args.prompt is None:
        raise TuningError("--json needs --prompt (it prints the whole completion as JSON)")
    sides = _sides(args, client)
    params = _params(args)
    out = sys.stdout
    if args.prompt is not None:
        if args.json:
            answers = {}
            for side in sides:
                side.messages.append({"role": "user", "content": args.prompt})
                completion = client.chat.completions.create(
                    model=side.model, messages=side.messages, **params
                )
                answers[side.label or "completion"] = completion.to_dict()
            _print_json(answers if args.compare_base else answers["completion"])
            return 0
        _turn(client, sides, args.prompt, params, out)
        return 0

    stdin = sys.stdin
    tty = stdin.isatty()
    if tty:
        print(f"chatting with {args.model}; /exit or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = _read_line(stdin, tty)
        except KeyboardInterrupt:
            out.write("\n")
            return EXIT_INTERRUPTED
        if line is None or line.strip() in EXIT_COMMANDS:
            return 0
        if not line.strip():
            continue
        try:
            _turn(client, sides, line, params, out)
        except KeyboardInterrupt:
            # Ctrl-C stops this answer (the stream's connection is closed: the service stops generating)
            # and forgets the turn; Ctrl-C (or Ctrl-D) at the prompt ends the chat.
            print("[interrupted]", file=sys.stderr)
            if not tty:
                return EXIT_INTERRUPTED


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))

"""The CLI's commands for files and job artifacts (`cli.py` holds the parser's trunk and the job basics).

tuning files upload PATH [--purpose fine-tune] | list [--limit N] | get ID | delete ID
tuning files content ID [-o FILE]
tuning jobs events ID [--after SEQ] | checkpoints ID | pause ID | resume ID
tuning jobs download ID DIR [--checkpoint STEP | --artifact tensorboard] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ._client import TuningClient
from ._objects import Checkpoint, FileObject

FILE_ACTIONS = ("upload", "list", "get", "delete", "content")
JOB_ACTIONS = ("events", "checkpoints", "download", "pause", "resume")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _fmt_time(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_file(f: FileObject) -> None:
    rows: list[tuple[str, Any]] = [
        ("id", f.id),
        ("status", f.status),
        ("filename", f.filename),
        ("bytes", f.bytes),
        ("purpose", f.purpose),
        ("created_at", _fmt_time(f.created_at)),
        ("format", f.format),
        ("num_examples", f.num_examples),
        ("error", str(f.error) if f.error else None),
    ]
    for key, value in rows:
        if value is not None:
            print(f"{key:<14}{value}")


def _print_checkpoints(ckpts: list[Checkpoint]) -> None:
    if not ckpts:
        print("no checkpoints")
        return

    def num(v: float | None) -> str:
        return f"{v:.4f}" if v is not None else "-"

    _table(
        ("STEP", "CREATED", "TRAIN LOSS", "EVAL LOSS", "ID"),
        [(c.step, _fmt_time(c.created_at), num(c.train_loss), num(c.eval_loss), c.id) for c in ckpts],
    )


def add_file_commands(sub: Any) -> list[argparse.ArgumentParser]:
    """Add ``tuning files ...``; returns the leaf parsers (they all take ``--json``)."""
    files = sub.add_parser("files", help="upload and manage JSONL data files")
    acts = files.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = acts.add_parser("upload", help="upload a JSONL file (validated at once)")
    up.add_argument("path", help="the JSONL file")
    up.add_argument("--purpose", default="fine-tune", help="the file's purpose (default fine-tune)")
    lst = acts.add_parser("list", help="list files, newest first")
    lst.add_argument("--purpose")
    lst.add_argument("--limit", type=int, default=20, help="show at most N files (0: all; default 20)")
    acts.add_parser("get", help="show a file").add_argument("id")
    acts.add_parser("delete", help="delete a file").add_argument("id")
    content = acts.add_parser("content", help="print (or save) a file's bytes as uploaded")
    content.add_argument("id")
    content.add_argument("-o", "--output", help="write to this file instead of stdout")
    return list(acts.choices.values())


def add_job_commands(acts: Any) -> None:
    """Add ``tuning jobs events|checkpoints|download|pause|resume``."""
    ev = acts.add_parser("events", help="a job's events (status changes, checkpoints, metrics, ...)")
    ev.add_argument("id")
    ev.add_argument("--after", type=int, default=None, help="start after this sequence number")
    acts.add_parser("checkpoints", help="a job's checkpoints").add_argument("id")
    dl = acts.add_parser(
        "download", help="download the adapter (or a checkpoint, or the TensorBoard files) into a folder"
    )
    dl.add_argument("id")
    dl.add_argument("dir", help="the folder to unpack into (PeftModel.from_pretrained loads it)")
    dl.add_argument("--checkpoint", type=int, metavar="STEP", help="this checkpoint instead of the final one")
    dl.add_argument(
        "--artifact",
        choices=("adapter", "tensorboard"),
        default="adapter",
        help="adapter (default) or tensorboard: the event files of a job created with --tensorboard "
        "(tensorboard --logdir DIR)",
    )
    dl.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")
    acts.add_parser("pause", help="pause a job (it checkpoints; resume continues)").add_argument("id")
    acts.add_parser("resume", help="resume a paused, failed or cancelled job").add_argument("id")


def run_files(args: argparse.Namespace, client: TuningClient) -> int:
    action = args.action
    if action == "upload":
        f = client.files.upload(args.path, purpose=args.purpose)
        if args.json:
            _print_json(f.to_dict())
        else:
            print_file(f)
        # A stored file that failed validation is a rejected input for a script.
        return 0 if f.is_processed else 3
    if action == "list":
        files: list[FileObject] = []
        for f in client.files.list(purpose=args.purpose, limit=min(args.limit, 100) if args.limit else None):
            files.append(f)
            if args.limit and len(files) >= args.limit:
                break
        if args.json:
            _print_json([f.to_dict() for f in files])
        elif files:
            _table(
                ("ID", "STATUS", "FILENAME", "BYTES", "EXAMPLES", "CREATED"),
                [
                    (f.id, f.status, f.filename, f.bytes, f.num_examples or "-", _fmt_time(f.created_at))
                    for f in files
                ],
            )
        else:
            print("no files")
        return 0
    if action == "get":
        f = client.files.get(args.id)
        if args.json:
            _print_json(f.to_dict())
        else:
            print_file(f)
        return 0
    if action == "delete":
        d = client.files.delete(args.id)
        if args.json:
            _print_json({"id": d.id, "object": d.object, "deleted": d.deleted})
        else:
            print(f"deleted {d.id}")
        return 0
    if action == "content":
        data = client.files.content(args.id)
        if args.output:
            with open(args.output, "wb") as out:
                out.write(data)
            print(f"wrote {len(data)} bytes to {args.output}", file=sys.stderr)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return 0
    raise AssertionError(f"unhandled files action {action}")


def run_job_action(args: argparse.Namespace, client: TuningClient, print_job: Any) -> int:
    action = args.action
    if action == "events":
        for rec in client.tunings.events(args.id, after=args.after):
            if args.json:
                print(json.dumps(rec.to_dict()), flush=True)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(rec.time)) if rec.time else "--:--:--"
                print(f"{stamp} {rec.seq:>5} {rec.format()}", flush=True)
        return 0
    if action == "checkpoints":
        ckpts = client.tunings.checkpoints(args.id)
        if args.json:
            _print_json([c.to_dict() for c in ckpts])
        else:
            _print_checkpoints(ckpts)
        return 0
    if action == "download":
        folder = client.tunings.download(
            args.id, args.dir, checkpoint=args.checkpoint, artifact=args.artifact, overwrite=args.overwrite
        )
        files = sorted(p.name for p in folder.iterdir())
        if args.json:
            _print_json(
                {
                    "id": args.id,
                    "artifact": args.artifact,
                    "checkpoint": args.checkpoint,
                    "path": str(folder),
                    "files": files,
                }
            )
        else:
            print(f"unpacked into {folder}: {', '.join(files)}")
        return 0
    if action in ("pause", "resume"):
        job = client.tunings.pause(args.id) if action == "pause" else client.tunings.resume(args.id)
        if args.json:
            _print_json(job.to_dict())
        else:
            print_job(job)
        return 0
    raise AssertionError(f"unhandled jobs action {action}")

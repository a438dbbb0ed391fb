"""A fake trainer for the stream tests: `stream:<n>?delay=S` writes `started`, n `metrics` records (every
10th in two partial writes with a pause between, so the service sees a half line), one malformed line just
before record n/2, then `completed`. Nothing on stdout: every record of the job is an events.jsonl line or a
service `status`/`log` record. Honours SIGTERM like the real trainer (`interrupted`, exit 4)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl

stop = False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    cfg = json.loads(Path(ap.parse_args().config).read_text())
    out = Path(cfg["output_dir"])
    count, _, query = cfg["model"].removeprefix("stream:").partition("?")
    n, delay = int(count), float(dict(parse_qsl(query)).get("delay", 0.002))

    def on_term(signum: int, frame: object) -> None:
        global stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with open(out / "events.jsonl", "a", encoding="utf-8") as f:

        def write(text: str) -> None:
            f.write(text)
            f.flush()

        write(
            json.dumps({"type": "started", "time": time.time(), "total_steps": n, "total_epochs": 1}) + "\n"
        )
        for step in range(1, n + 1):
            if stop:
                write(json.dumps({"type": "interrupted", "time": time.time(), "step": step}) + "\n")
                return 4
            if step == n // 2:
                write("this line is not json {\n")
            line = json.dumps(
                {"type": "metrics", "time": time.time(), "step": step, "total_steps": n, "loss": 1.0 / step}
            )
            if step % 10 == 0:
                write(line[:20])
                time.sleep(0.03)  # the service polls every 50 ms: it sees this half line
                write(line[20:] + "\n")
            else:
                write(line + "\n")
            time.sleep(delay)
        write(
            json.dumps({"type": "completed", "time": time.time(), "total_steps": n, "tokens_seen": n}) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A stand-in for `python -m tuning_trainer.serve` that speaks its protocol without a model (a narrow test
double for the service's worker manager). FAKE_WORKER_MODE: `ok` answers "hello" in two deltas; `crash`
dies in the middle of a generation; `exit` fails at start-up with a message on stderr; `slow` binds its
socket after 0.6 s."""

from __future__ import annotations

import argparse
import json
import os
import socketserver
import sys
import time

mode = os.environ.get("FAKE_WORKER_MODE", "ok")


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        req = json.loads(self.rfile.readline())
        out = self.wfile
        if req["op"] == "stats":
            out.write(
                json.dumps(
                    {
                        "type": "stats",
                        "pid": os.getpid(),
                        "requests": 1,
                        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                        "loaded": [],
                    }
                ).encode()
                + b"\n"
            )
            return
        out.write(b'{"type": "start", "prompt_tokens": 3}\n')
        out.write(b'{"type": "delta", "index": 0, "text": "hel", "logprobs": null}\n')
        out.flush()
        if mode == "crash":
            os._exit(1)
        out.write(b'{"type": "delta", "index": 0, "text": "lo", "logprobs": null}\n')
        out.write(b'{"type": "finish", "index": 0, "reason": "stop", "completion_tokens": 2}\n')
        out.write(b'{"type": "done", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket")
    args, _ = parser.parse_known_args()
    if mode == "slow":  # a worker still importing torch: no socket yet
        time.sleep(0.6)
    if mode == "exit":
        print("fake worker: cannot start (CUDA out of memory)", file=sys.stderr)
        sys.exit(3)
    server = socketserver.UnixStreamServer(args.socket, Handler)
    server.serve_forever()


main()

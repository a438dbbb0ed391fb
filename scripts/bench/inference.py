#!/usr/bin/env python3
"""I1: inference through the API (`POST /v1/chat/completions`, served by the on-demand worker) against the
same model run directly in this process with transformers `generate` (+ peft for a fine-tune), interleaved.

    python scripts/bench/inference.py [--rounds 20] [--json PATH]             # ~3-4 minutes on 2 quiet cores
    python scripts/bench/inference.py --quick --json PATH                      # tiny model: proves it runs
    options: [--shape small|tiny|8b-vocab|1b|8b] [--layers N] [--cold-rounds 3] [--max-tokens 64]
        [--ttft-tokens 4] [--switch-rounds N] [--switch-requests 6] [--threads N] [--pause 0.1]
        [--prompt-repeat 1] [--train-steps 2] [--keep]

Set-up: a randomly initialised Llama of --shape (random_llama.py's shapes, plus `small`: hidden 512, 4
layers, 8/2 heads, a 32,000-token head, 45 M parameters: ~45 ms to the first token of an 85-token prompt
and ~60 tokens/s on 2 CPU cores, so that HTTP is not all that is measured) with the local tokenizer and chat
template (tuning_trainer.tiny's), saved under the service's TUNING_MODELS_DIR. The output head's rows of
every token id that does not decode to text on its own (the special tokens, EOS among them, byte fragments,
ids beyond the tokenizer's 512) are zeroed: their logit is 0, below the largest of the others, so greedy
decoding never picks them: no run ends early and every generated token is a content chunk. A real service
(tests/support/server.py) then trains two LoRA fine-tunes A and B of that model through the API
(--train-steps steps each, both jobs at once): a fine-tune is servable only as a succeeded job's.

Figures (--rounds interleaved rounds: API, direct, API, direct...; each round's ratio API / direct, their
median and spread; both sides greedy on the same prompt ids, and their texts compared):
- I1  warm time to first token (TTFT), base model. API: from sending a streamed chat completion (max_tokens
      --ttft-tokens) to the first chunk with non-empty content. Direct: from calling `generate` (a streamer
      timing each token) to the first new token. Target <= 1.2, on the ratio of the medians. Diagnostic
      sides in the same rounds: the same generation sent straight to the worker's Unix socket (no HTTP, no
      service), and one bare forward pass over the prompt with its argmax read back (the floor); and the CPU
      time each process spent per request.
- I1f the same on fine-tune A (direct: peft, A's adapter active), target <= 1.2.
- decode tokens/s: (tokens - 1) / (last token - first token), --max-tokens tokens on both sides (the API's
  count is its `usage.completion_tokens`), and end to end (tokens / request time).
- adapter switch: blocks of --switch-requests requests alternating A, B, A, B vs as many to one fine-tune (A
  or B by round), TTFT each: the added latency per request (alternating - repeated, medians), through the
  API and directly (peft `set_adapter` before `generate`, as the worker does), and the worker's own
  `switch_seconds` / `adapter_switches` over the blocks (its stats, op `stats` on the socket).
- cold start: the first request after the worker starts (its process, imports, model load: the worker is
  stopped before each API round) to its first content chunk, against a fresh Python process that imports
  torch + transformers, loads the same model and generates its first token; the worker's `load_seconds`.
The worker computes with the service's threads (TUNING_CPU_THREADS = --threads, default all CPUs), and so
does the direct side; --pause seconds between measured calls let the other side's threads go idle. On a GPU
the service leases GPU 0 to jobs and shares it with the worker; the direct side and the cold process use it
too (--shape 8b: ~16 GB each in bf16).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from _common import DEV_KEY, Row, finish, parser
from random_llama import FP32_SHAPES
from random_llama import SHAPES as RANDOM_SHAPES
from tests.support.server import ServiceProcess, make_light_files_root, start_service

# `small` is not one of random_llama's shapes: a few tens of millions of parameters, enough compute per token
# on a CPU for the ratio to mean something, small enough for 2 cores.
SHAPES: dict[str, dict[str, Any]] = {
    **RANDOM_SHAPES,
    "small": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=32000,
    ),
}
CPU_SHAPES = (*FP32_SHAPES, "small")  # saved in fp32 (the CPU computes in fp32); the others in bf16

SYSTEM = "You are a short and exact assistant."
USER = (
    "Please repeat after me, word for word, and then say what colour the sky, the grass, the sun, the snow "
    "and the coal are, and what the cat, the dog, the cow, the duck and the owl say today."
)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


# ---- the model ---------------------------------------------------------------------------------------------


def build_model(shape: str, layers: int | None, out: Path, device: str) -> dict[str, Any]:
    """A random-init Llama of `shape` with the local tokenizer (random_llama.py's recipe), its head's rows
    of non-text tokens zeroed; returns what was built."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from tuning_trainer.tiny import build_tokenizer, warmup_corpus

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer(warmup_corpus(2000, seed=0))
    cfg = dict(SHAPES[shape])
    if layers:
        cfg["num_hidden_layers"] = layers
    cfg["vocab_size"] = max(cfg["vocab_size"], len(tokenizer))
    config = LlamaConfig(
        **cfg,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    dtype = torch.float32 if shape in CPU_SHAPES else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    special = set(tokenizer.all_special_ids)
    text = [
        i
        for i in range(len(tokenizer))
        if i not in special and (s := tokenizer.decode([i])) and "\ufffd" not in s
    ]
    keep = torch.zeros(config.vocab_size, dtype=torch.bool)
    keep[text] = True
    with torch.no_grad():
        model.lm_head.weight[~keep.to(model.lm_head.weight.device)] = 0.0
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "shape": shape,
        "config": cfg,
        "parameters": params,
        "dtype": str(dtype).removeprefix("torch."),
        "text_tokens": len(text),
        "zeroed_head_rows": config.vocab_size - len(text),
    }


# ---- the API side ------------------------------------------------------------------------------------------


class Api:
    """Streamed chat completions over one keep-alive connection (as an OpenAI client keeps one)."""

    # uvicorn closes a connection idle for 5 s (timeout_keep_alive): one idle longer is replaced before the
    # request, as a client's pool would, so that no measured request pays for a failed send.
    IDLE_S = 3.0

    def __init__(self, svc: ServiceProcess) -> None:
        self.port = svc.port
        self.conn: http.client.HTTPConnection | None = None
        self.used = 0.0

    def chat(self, model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        if time.monotonic() - self.used > self.IDLE_S:
            self.close()
        try:
            return self._chat(model, messages, max_tokens)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.close()  # closed by the server all the same: once more on a new connection
            return self._chat(model, messages, max_tokens)
        finally:
            self.used = time.monotonic()

    def _chat(self, model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        body = json.dumps(
            {
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        headers = {"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"}
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=900)
        try:
            t0 = time.perf_counter()
            self.conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = self.conn.getresponse()
            if resp.status != 200:
                raise SystemExit(f"{model}: HTTP {resp.status}: {resp.read()[:2000]!r}")
            times: list[float] = []
            text: list[str] = []
            usage = None
            while raw := resp.readline():
                if not raw.startswith(b"data: "):
                    continue
                now = time.perf_counter()
                payload = raw[6:].strip()
                if payload == b"[DONE]":
                    continue
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise SystemExit(f"{model}: error in the stream: {chunk['error']}")
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        times.append(now)
                        text.append(content)
                if chunk.get("usage"):
                    usage = chunk["usage"]
            end = time.perf_counter()
        except BaseException:
            self.close()
            raise
        if not times or usage is None:
            raise SystemExit(f"{model}: no content or no usage in the stream")
        return {
            "ttft": times[0] - t0,
            "first": times[0],
            "last": times[-1],
            "total": end - t0,
            "tokens": int(usage["completion_tokens"]),
            "prompt_tokens": int(usage["prompt_tokens"]),
            "chunks": len(times),
            "text": "".join(text),
        }

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Worker:
    """The inference worker's Unix socket, straight (tuning_trainer/serve/protocol.py): stats, and the same
    generation the service would send (the diagnostic side)."""

    def __init__(self, svc: ServiceProcess) -> None:
        from tuning_service.inference.worker import socket_path

        data_dir = svc.data_dir.resolve()
        self.path = str(socket_path(SimpleNamespace(data_dir=data_dir, inference_dir=data_dir / "inference")))

    def _open(self, op: dict[str, Any]) -> tuple[socket.socket, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(900)
        sock.connect(self.path)
        sock.sendall(json.dumps(op).encode() + b"\n")
        return sock, sock.makefile("rb")

    def stats(self) -> dict[str, Any]:
        sock, rfile = self._open({"op": "stats"})
        with sock, rfile:
            return dict(json.loads(rfile.readline()))

    def chat(
        self,
        location: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        adapter: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        op = {
            "op": "generate",
            "base": {"location": location, "quantize": False},
            "adapter": adapter,
            "kind": "chat",
            "messages": messages,
            "max_tokens": max_tokens,
            "echo": False,
            "logprobs": None,
            "sampling": {"temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None, "n": 1},
        }
        t0 = time.perf_counter()
        sock, rfile = self._open(op)
        times: list[float] = []
        start: dict[str, Any] = {}
        tokens = 0
        with sock, rfile:
            while raw := rfile.readline():
                event = json.loads(raw)
                if event["type"] == "start":
                    start = event
                elif event["type"] == "delta" and event["text"]:
                    times.append(time.perf_counter())
                elif event["type"] == "error":
                    raise SystemExit(f"worker: {event}")
                elif event["type"] == "done":
                    tokens = int(event["usage"]["completion_tokens"])
                    break
        return {
            "ttft": times[0] - t0,
            "tokens": tokens,
            "queued_seconds": start.get("queued_seconds"),
        }


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (its threads, living and ended), 10 ms resolution."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_worker(svc: ServiceProcess) -> None:
    pid = svc.inference_pid()
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while svc.inference_pid() is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        time.sleep(0.05)


def worker_listening_at(svc: ServiceProcess, pid: int) -> float | None:
    """When the worker `pid` logged that it listens (wall-clock seconds), from its log; None if not found."""
    try:
        lines = (svc.data_dir / "inference" / "worker.log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if f"inference worker {pid} " in line and "listening" in line:
            with contextlib.suppress(ValueError):
                return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


# ---- the direct side ---------------------------------------------------------------------------------------


class Direct:
    """The same model in this process, loaded as the worker loads it, run with `generate`."""

    def __init__(self, location: str, device: Any) -> None:
        from transformers import AutoModelForCausalLM

        from tuning_trainer.dataset import ensure_chat_template
        from tuning_trainer.modelling import compute_dtype, load_tokenizer

        self.device = device
        device_map = {"": 0} if device.type == "cuda" else {"": "cpu"}
        self.model = AutoModelForCausalLM.from_pretrained(
            location, dtype=compute_dtype(device), device_map=device_map
        )
        self.model.eval()
        self.tokenizer = load_tokenizer(location)
        ensure_chat_template(self.tokenizer)
        self.active: str | None = None
        self.switch_times: list[float] = []

    def ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's ids, rendered and tokenised as the worker does."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def add_adapters(self, adapters: dict[str, str]) -> None:
        from peft import PeftModel

        for name, path in adapters.items():
            if self.active is None:  # the first is the active one, as in the worker
                self.model = PeftModel.from_pretrained(
                    self.model, path, adapter_name=name, is_trainable=False
                )
                self.active = name
            else:
                self.model.load_adapter(path, adapter_name=name, is_trainable=False)
        self.model.eval()

    def forward(self, ids: list[int], adapter: str | None = None) -> dict[str, Any]:
        """The floor: one forward pass over the prompt (KV cache on, the last position's logits) and its
        argmax read back, no `generate` around it."""
        import torch

        prompt = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            if adapter is not None and adapter != self.active:
                self.model.set_adapter(adapter)
                self.active = adapter
            out = self.model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            out.logits[0, -1].argmax().item()
            return {"ttft": time.perf_counter() - t0}

    def generate(self, ids: list[int], max_tokens: int, adapter: str | None = None) -> dict[str, Any]:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class Stamps(BaseStreamer):  # type: ignore[misc]
            def __init__(self) -> None:
                self.times: list[float] = []

            def put(self, value: Any) -> None:  # the prompt first, then each new token
                self.times.append(time.perf_counter())

            def end(self) -> None:
                pass

        prompt = torch.tensor([ids], device=self.device)
        mask = torch.ones_like(prompt)
        stamps = Stamps()
        with torch.inference_mode():
            t0 = time.perf_counter()
            if adapter is not None and adapter != self.active:  # as the worker: only when it changes
                self.model.set_adapter(adapter)
                self.switch_times.append(time.perf_counter() - t0)
                self.active = adapter
            out = self.model.generate(
                input_ids=prompt,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                streamer=stamps,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            end = time.perf_counter()
        new = out[0, len(ids) :].tolist()
        first, last = stamps.times[1], stamps.times[-1]
        return {
            "ttft": first - t0,
            "first": first,
            "last": last,
            "total": end - t0,
            "tokens": len(new),
            "text": self.tokenizer.decode(new, skip_special_tokens=True),
        }


COLD_CHILD = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
imported = time.time()
threads, location, messages = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
if threads > 0:
    torch.set_num_threads(threads)
cuda = torch.cuda.is_available()
dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, device_map={"": 0 if cuda else "cpu"})
model.eval()
tokenizer = AutoTokenizer.from_pretrained(location)
loaded = time.time()
text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=model.device)
with torch.inference_mode():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                         do_sample=False, temperature=None, top_p=None, top_k=None,
                         pad_token_id=tokenizer.pad_token_id)
    out[0, -1].item()
print(json.dumps({"imported": imported, "loaded": loaded, "first": time.time()}))
"""


def direct_cold(env: dict[str, str], threads: int, location: str, messages: list[dict[str, str]]) -> dict:
    """A fresh process: import torch + transformers, load the model, its first token (wall-clock)."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", COLD_CHILD, str(threads), location, json.dumps(messages)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"direct cold start failed:\n{out.stderr[-3000:]}")
    marks = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "first_token_s": marks["first"] - t0,
        "imports_s": marks["imported"] - t0,
        "load_s": marks["loaded"] - marks["imported"],
    }


# ---- the benchmark -----------------------------------------------------------------------------------------


def train_fine_tunes(svc: ServiceProcess, model: str, steps: int) -> list[dict[str, Any]]:
    """Two LoRA fine-tunes of `model` through the API, both jobs at once; their job objects."""
    hp = {"max_steps": steps, "batch_size": 2, "max_seq_length": 64, "logging_steps": 1}
    jobs = [svc.create_job(model=model, method="lora", hyperparameters=hp, suffix=s) for s in ("a", "b")]
    return [svc.wait_for(j["id"], "succeeded", timeout=1800) for j in jobs]


def ms(x: float) -> str:
    return f"{1e3 * x:.1f} ms"


class Bench:
    """The sides and the phases, in the order they run (main)."""

    def __init__(self, args: Any, svc: ServiceProcess, location: str, name: str) -> None:
        self.args, self.svc, self.location, self.name = args, svc, location, name
        self.api, self.worker = Api(svc), Worker(svc)
        self.direct: Direct | None = None
        self.messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": " ".join([USER] * args.prompt_repeat)},
        ]
        self.ids: list[int] = []
        self.same_text: list[bool] = []

    def pause(self) -> None:
        time.sleep(self.args.pause)

    def api_chat(self, model: str, max_tokens: int) -> dict[str, Any]:
        return self.api.chat(model, self.messages, max_tokens)

    def gen(self, max_tokens: int, adapter: str | None = None) -> dict[str, Any]:
        assert self.direct is not None
        return self.direct.generate(self.ids, max_tokens, adapter)

    def cold(self, rounds: int) -> dict[str, list[Any]]:
        """API: the worker stopped, then one request; direct: a fresh process. Alternating sides first."""
        out: dict[str, list[Any]] = {"api": [], "direct": [], "load_seconds": [], "listening_s": []}
        for r in range(rounds):
            for side in ("api", "direct") if r % 2 == 0 else ("direct", "api"):
                if side == "api":
                    stop_worker(self.svc)
                    sent = time.time()
                    out["api"].append(self.api_chat(self.name, 1)["ttft"])
                    pid = self.svc.inference_pid()
                    listening = worker_listening_at(self.svc, pid) if pid else None
                    out["load_seconds"].append(self.worker.stats()["load_seconds"])
                    out["listening_s"].append(None if listening is None else listening - sent)
                else:
                    child = direct_cold(self.svc.env, self.args.threads, self.location, self.messages)
                    out["direct"].append(child)
                self.pause()
            log(
                f"cold round {r + 1}: API {out['api'][-1]:.2f}s (worker load_seconds "
                f"{out['load_seconds'][-1]:.2f}s), direct {out['direct'][-1]['first_token_s']:.2f}s"
            )
        return out

    def ttft(self, rounds: int, n: int, tune: dict[str, Any] | None = None) -> dict[str, Any]:
        """API, worker socket, direct, ... on the base model, or on a fine-tune (`tune`: its job object);
        with the CPU time each side used (the service's and the worker's from /proc, in clock ticks, summed
        over the rounds; this process's exactly)."""
        model = self.name if tune is None else tune["fine_tuned_model"]
        adapter = None if tune is None else tune["id"]
        spec = None if tune is None else {"name": tune["id"], "path": tune["adapter_path"]}
        for _ in range(2):  # warm-up, unmeasured
            self.api_chat(model, n)
            self.worker.chat(self.location, self.messages, n, spec)
            self.gen(n, adapter)
        assert self.svc.proc is not None
        procs = {"service": self.svc.proc.pid, "worker": self.svc.inference_pid()}
        out: dict[str, Any] = {"api": [], "worker": [], "direct": [], "forward": []}
        cpu = {side: {"service": 0.0, "worker": 0.0, "bench": 0.0} for side in out}

        def measured(side: str, call: Any) -> dict[str, Any]:
            before = {k: cpu_seconds(pid) for k, pid in procs.items()}
            mine = time.process_time()
            got = call()
            cpu[side]["bench"] += time.process_time() - mine
            for k, pid in procs.items():
                cpu[side][k] += cpu_seconds(pid) - before[k]
            out[side].append(got["ttft"])
            self.pause()
            return dict(got)

        for _ in range(rounds):
            got = measured("api", lambda: self.api_chat(model, n))
            if got["prompt_tokens"] != len(self.ids):
                raise SystemExit(f"the API's prompt is {got['prompt_tokens']} tokens, ours {len(self.ids)}")
            measured("worker", lambda: self.worker.chat(self.location, self.messages, n, spec))
            mine = measured("direct", lambda: self.gen(n, adapter))
            self.same_text.append(mine["text"] == got["text"])
            measured("forward", lambda: self.direct.forward(self.ids, adapter))  # type: ignore[union-attr]
        out["cpu_ms_per_request"] = {
            side: {k: round(1e3 * v / rounds, 2) for k, v in parts.items()} for side, parts in cpu.items()
        }
        log(
            f"TTFT {model}: API {ms(statistics.median(out['api']))}, worker socket "
            f"{ms(statistics.median(out['worker']))}, direct {ms(statistics.median(out['direct']))}, one "
            f"forward pass {ms(statistics.median(out['forward']))}"
        )
        return out

    def decode(self, rounds: int, n: int) -> dict[str, list[dict[str, float]]]:
        out: dict[str, list[dict[str, float]]] = {"api": [], "direct": []}
        for _ in range(rounds):
            texts = []
            for side in ("api", "direct"):
                got = self.api_chat(self.name, n) if side == "api" else self.gen(n)
                texts.append(got["text"])
                out[side].append(
                    {
                        "tokens": got["tokens"],
                        "tokens_per_s": (got["tokens"] - 1) / (got["last"] - got["first"]),
                        "end_to_end_tokens_per_s": got["tokens"] / got["total"],
                        "ttft_s": got["ttft"],
                    }
                )
                self.pause()
            self.same_text.append(texts[0] == texts[1])
        log(
            f"decode: API {statistics.median(r['tokens_per_s'] for r in out['api']):.1f} tok/s, direct "
            f"{statistics.median(r['tokens_per_s'] for r in out['direct']):.1f} tok/s"
        )
        return out

    def load_adapters(self, tunes: dict[str, str], adapters: dict[str, str]) -> dict[str, float]:
        """Each fine-tune once through the API (the worker loads its adapter), and into peft here."""
        before = self.worker.stats()
        for model in tunes.values():
            self.api_chat(model, self.args.ttft_tokens)
        after = self.worker.stats()
        assert self.direct is not None
        self.direct.add_adapters(adapters)
        return {
            "count": after["adapter_loads"] - before["adapter_loads"],
            "seconds": after["switch_seconds"] - before["switch_seconds"],
        }

    def switching(self, rounds: int, block: int, tunes: dict[str, str], n: int) -> dict[str, Any]:
        """Blocks of `block` requests: alternating A, B, A, B... or all to one fine-tune (A or B by round);
        the API's blocks and the direct ones, each side's two blocks in an order flipped every round."""
        a, b = list(tunes)
        ttft: dict[str, list[float]] = {"api_alt": [], "api_rep": [], "direct_alt": [], "direct_rep": []}
        worker = {k: {"switches": 0, "seconds": 0.0} for k in ("alt", "rep")}
        for r in range(rounds):
            one = a if r % 2 == 0 else b
            for side in ("api", "direct"):
                for kind in ("alt", "rep") if r % 2 == 0 else ("rep", "alt"):
                    seq = [(a, b)[i % 2] for i in range(block)] if kind == "alt" else [one] * block
                    before = self.worker.stats() if side == "api" else None
                    for adapter in seq:
                        got = self.api_chat(tunes[adapter], n) if side == "api" else self.gen(n, adapter)
                        ttft[f"{side}_{kind}"].append(got["ttft"])
                        self.pause()
                    if before is not None:
                        after = self.worker.stats()
                        worker[kind]["switches"] += after["adapter_switches"] - before["adapter_switches"]
                        worker[kind]["seconds"] += after["switch_seconds"] - before["switch_seconds"]
        added = {
            side: statistics.median(ttft[f"{side}_alt"]) - statistics.median(ttft[f"{side}_rep"])
            for side in ("api", "direct")
        }
        assert self.direct is not None
        log(
            f"switching: API {1e3 * added['api']:+.2f} ms a request, direct {1e3 * added['direct']:+.2f} ms; "
            f"worker: {worker['alt']['switches']} switches in {ms(worker['alt']['seconds'])}"
        )
        return {
            "ttft_s": ttft,
            "worker": worker,
            "added_per_request_s": added,
            "direct_set_adapter_s": list(self.direct.switch_times),
        }


def run(
    args: Any,
    svc: ServiceProcess,
    location: str,
    name: str,
    built: dict[str, Any],
    device: Any,
    counts: dict[str, int],
) -> dict[str, Any]:
    t0 = time.monotonic()
    jobs = train_fine_tunes(svc, name, args.train_steps)
    tunes = {j["id"]: j["fine_tuned_model"] for j in jobs}
    log(f"two fine-tunes trained through the API in {time.monotonic() - t0:.0f}s: {list(tunes.values())}")
    bench = Bench(args, svc, location, name)
    rounds, n = counts["rounds"], args.ttft_tokens

    cold = bench.cold(counts["cold_rounds"])  # the worker stays up after the last one
    bench.direct = Direct(location, device)
    bench.ids = bench.direct.ids(bench.messages)
    ttft = bench.ttft(rounds, n)
    decode = bench.decode(rounds, counts["max_tokens"])
    # Fine-tunes after the base: from the first adapter on, the worker's base requests go through peft.
    loads = bench.load_adapters(tunes, {j["id"]: j["adapter_path"] for j in jobs})
    ttft_ft = bench.ttft(rounds, n, jobs[0])
    switch = bench.switching(counts["switch_rounds"], counts["block"], tunes, n)
    final = bench.worker.stats()
    return {
        "config": {
            "shape": args.shape,
            "layers": args.layers,
            "model": built,
            "device": str(device),
            "threads": args.threads,
            **counts,
            "ttft_tokens": n,
            "pause_s": args.pause,
            "prompt_tokens": len(bench.ids),
            "train_steps": args.train_steps,
            "fine_tunes": list(tunes.values()),
        },
        "ttft_base_s": ttft,
        "ttft_fine_tune_s": ttft_ft,
        "same_greedy_text": bench.same_text,
        "decode": decode,
        "switch": switch,
        "adapter_loads": loads,
        "cold": cold,
        "worker_stats": {k: v for k, v in final.items() if k != "loaded"},
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--layers", type=int, help="decoder layers (default: the shape's)")
    p.add_argument("--rounds", type=int, help="interleaved rounds of each figure (default 20; --quick 2)")
    p.add_argument("--cold-rounds", type=int, help="cold starts on each side (default 3; --quick 1)")
    p.add_argument("--max-tokens", type=int, help="tokens of each decode run (default 64; --quick 16)")
    p.add_argument("--ttft-tokens", type=int, default=4, help="max_tokens of the TTFT and switch requests")
    p.add_argument("--switch-rounds", type=int, help="rounds of switch blocks (default: half of --rounds)")
    p.add_argument("--switch-requests", type=int, help="requests per switch block (default 6; --quick 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides")
    p.add_argument("--pause", type=float, default=0.1, help="seconds between measured calls")
    p.add_argument("--prompt-repeat", type=int, default=1, help="the user message this many times over")
    p.add_argument("--train-steps", type=int, default=2, help="LoRA steps of each fine-tune")
    p.add_argument("--keep", action="store_true", help="keep the working folder (model, service data)")
    args = p.parse_args()
    if args.quick:
        args.shape = "tiny"
    rounds = args.rounds or (2 if args.quick else 20)
    counts = {
        "rounds": rounds,
        "cold_rounds": args.cold_rounds or (1 if args.quick else 3),
        "max_tokens": args.max_tokens or (16 if args.quick else 64),
        "switch_rounds": args.switch_rounds or max(2, rounds // 2),
        "block": args.switch_requests or (2 if args.quick else 6),
    }
    if counts["max_tokens"] < 2:
        raise SystemExit("--max-tokens must be at least 2 (a decode rate needs two tokens)")

    # A coverage hook in the measured processes (service, worker, cold process) would skew them.
    os.environ.pop("COVERAGE_PROCESS_START", None)
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    name = f"bench-{args.shape}"
    location = work / "models" / name
    started = time.monotonic()
    built = build_model(args.shape, args.layers, location, device.type)
    log(
        f"random {args.shape} Llama: {built['parameters'] / 1e6:.1f} M parameters ({built['dtype']}), "
        f"{built['text_tokens']} text tokens, built in {time.monotonic() - started:.0f}s; work {work}"
    )
    extra = {
        "TUNING_RATE_LIMIT_RPS": "0",
        "TUNING_CPU_THREADS": str(args.threads),  # the worker's torch threads (and each trainer's)
        "TUNING_MAX_CONCURRENT_JOBS": "2",
    }
    if device.type == "cuda":
        extra.update(TUNING_GPUS="0", TUNING_INFERENCE_GPU="share")
    svc = start_service(
        data_dir=work / "data",
        files_root=make_light_files_root(work / "files"),
        models_dir=work / "models",
        extra_env=extra,
    )
    try:
        details = run(args, svc, str(location.resolve()), name, built, device, counts)
    finally:
        svc.shutdown()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    details["seconds"] = round(time.monotonic() - started, 1)
    report(args, details)


# ---- the report --------------------------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def quartiles(xs: list[float]) -> str:
    """The middle half: the 25th to the 75th percentile."""
    if len(xs) < 4:
        return "-"
    q = statistics.quantiles(xs, n=4)
    return f"{fmt(q[0])}-{fmt(q[2])}"


def med_range(xs: list[float]) -> str:
    s = spread(xs)
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})" if len(xs) > 1 else fmt(s["median"])


def _ratios(api: list[float], base: list[float]) -> list[float]:
    return [x / y for x, y in zip(api, base, strict=True)]


def report(args: Any, d: dict[str, Any]) -> None:
    tb, tf, dec, cold = d["ttft_base_s"], d["ttft_fine_tune_s"], d["decode"], d["cold"]
    sw, ws = d["switch"]["ttft_s"], d["switch"]["worker"]["alt"]

    def in_ms(xs: list[float]) -> list[float]:
        return [1e3 * x for x in xs]

    def col(runs: list[dict[str, float]], key: str) -> list[float]:
        return [r[key] for r in runs]

    cold_direct = col(cold["direct"], "first_token_s")
    # label -> (API values, direct values): every round's ratio, their median and spread
    paired = {
        "ttft_base": ("TTFT base model, ms", in_ms(tb["api"]), in_ms(tb["direct"])),
        "ttft_base_worker": (
            "  same, straight to the worker socket",
            in_ms(tb["worker"]),
            in_ms(tb["direct"]),
        ),
        "ttft_base_forward": (
            "  one forward pass over the prompt (floor)",
            in_ms(tb["forward"]),
            in_ms(tb["direct"]),
        ),
        "ttft_fine_tune": ("TTFT fine-tune A, ms", in_ms(tf["api"]), in_ms(tf["direct"])),
        "ttft_fine_tune_worker": (
            "  same, straight to the worker socket",
            in_ms(tf["worker"]),
            in_ms(tf["direct"]),
        ),
        "ttft_fine_tune_forward": (
            "  one forward pass over the prompt (floor)",
            in_ms(tf["forward"]),
            in_ms(tf["direct"]),
        ),
        "decode": (
            "decode tokens/s (first to last token)",
            col(dec["api"], "tokens_per_s"),
            col(dec["direct"], "tokens_per_s"),
        ),
        "decode_end_to_end": (
            "tokens/s end to end (incl. TTFT)",
            col(dec["api"], "end_to_end_tokens_per_s"),
            col(dec["direct"], "end_to_end_tokens_per_s"),
        ),
        "cold": ("cold start to first token, s", cold["api"], cold_direct),
    }
    per_round = {k: _ratios(api, base) for k, (_, api, base) in paired.items()}
    d["ratios_per_round"] = {k: [round(x, 4) for x in v] for k, v in per_round.items()}
    d["ratio_spread"] = {k: spread(v) for k, v in per_round.items()}
    d["ttft_breakdown_ms"] = {
        what: {
            "forward_pass": 1e3 * statistics.median(t["forward"]),
            "generate": 1e3 * statistics.median(t["direct"]),
            "worker_socket": 1e3 * statistics.median(t["worker"]),
            "api": 1e3 * statistics.median(t["api"]),
        }
        for what, t in (("base", tb), ("fine_tune", tf))
    }

    head = [
        "what",
        "API (or the side named)",
        "direct",
        "÷ direct per round: median (min-max)",
        "middle half",
    ]
    body = [
        [label, med_range(api), med_range(base), med_range(per_round[k]), quartiles(per_round[k])]
        for k, (label, api, base) in paired.items()
    ]
    added = d["switch"]["added_per_request_s"]
    body.append(
        [
            "TTFT alternating A/B minus repeated, ms",
            f"{1e3 * added['api']:+.2f}",
            f"{1e3 * added['direct']:+.2f}",
            "alternating {} / {}, repeated {} / {}".format(
                *(
                    fmt(1e3 * statistics.median(sw[k]))
                    for k in ("api_alt", "direct_alt", "api_rep", "direct_rep")
                )
            ),
            "-",
        ]
    )
    per_switch = 1e3 * ws["seconds"] / ws["switches"] if ws["switches"] else None
    set_adapter = d["switch"]["direct_set_adapter_s"]
    body.append(
        [
            "set_adapter per switch, ms",
            f"{fmt(per_switch)} (worker stats, {ws['switches']} switches)",
            fmt(1e3 * statistics.median(set_adapter)) if set_adapter else "-",
            "-",
            "-",
        ]
    )
    body.append(
        [
            "model load, s (worker: load_seconds)",
            med_range(cold["load_seconds"]),
            med_range(col(cold["direct"], "load_s")),
            "-",
            "-",
        ]
    )
    widths = [max(len(str(x)) for x in c) for c in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    cfg = d["config"]
    print(
        f"# inference: shape={cfg['shape']} ({cfg['model']['parameters'] / 1e6:.1f} M parameters, "
        f"{cfg['model']['dtype']}) device={cfg['device']} threads={cfg['threads']} "
        f"prompt={cfg['prompt_tokens']} tokens; TTFT requests of {cfg['ttft_tokens']} tokens, decode runs "
        f"of {cfg['max_tokens']}; {cfg['rounds']} rounds, {cfg['cold_rounds']} cold; medians (min-max)"
    )
    print("\n".join(lines))
    for what, t in (("base", tb), ("fine-tune", tf)):
        cpu = t["cpu_ms_per_request"]
        print(
            f"# CPU ms per TTFT request, {what} (means): API: service {cpu['api']['service']:.1f} + worker "
            f"{cpu['api']['worker']:.1f}; worker socket: worker {cpu['worker']['worker']:.1f}; direct: "
            f"{cpu['direct']['bench']:.1f} (this process)"
        )
    for what, b in d["ttft_breakdown_ms"].items():
        print(
            f"# TTFT {what} (medians): one forward pass {b['forward_pass']:.1f} ms; generate "
            f"{b['generate'] - b['forward_pass']:+.1f} ms over it; the worker socket "
            f"{b['worker_socket'] - b['forward_pass']:+.1f} ms over it; the API "
            f"{b['api'] - b['worker_socket']:+.1f} ms over the worker socket "
            f"({b['api'] - b['generate']:+.1f} ms over generate)"
        )
    print(
        f"# the same greedy text on both sides in {sum(d['same_greedy_text'])}/{len(d['same_greedy_text'])} "
        "comparisons"
    )
    rows = [
        Row(
            "I1",
            f"warm TTFT, base model ({cfg['shape']}), API ÷ generate",
            statistics.median(tb["api"]) * 1e3,
            "ms",
            statistics.median(tb["direct"]) * 1e3,
            "transformers generate, same prompt ids, same process",
            "<=",
            1.2,
            extra={"per_round": d["ratios_per_round"]["ttft_base"]},
        ),
        Row(
            "I1f",
            f"warm TTFT, fine-tune ({cfg['shape']} + LoRA), API ÷ generate",
            statistics.median(tf["api"]) * 1e3,
            "ms",
            statistics.median(tf["direct"]) * 1e3,
            "peft + generate, same adapter",
            "<=",
            1.2,
            extra={"per_round": d["ratios_per_round"]["ttft_fine_tune"]},
        ),
    ]
    finish("inference", rows, args, d)


if __name__ == "__main__":
    main()

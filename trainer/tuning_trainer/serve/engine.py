"""The transformers + peft inference engine: base models loaded once, LoRA adapters switched per request.

One engine thread runs the requests in arrival order (a device runs one forward at a time anyway; requests
queue rather than contend). Each base model (a location, 4-bit or not) is loaded once; a fine-tune's adapter
is added to it with peft's `load_adapter` under the fine-tune's job id and made active per request, the most
recent `max_adapters` kept; the base alone runs with the adapters disabled, so no second copy of it exists.
A model unused for `idle_seconds` is unloaded.

Decoding is a plain KV-cached loop rather than `generate`: it streams each token as it comes, stops on a
cancel between tokens, reports the model's own log probabilities (before temperature and penalties, as
OpenAI and vLLM do), scores a prompt (`echo`), and applies stop sequences to the text, holding back just the
characters that could begin one.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..dataset import ensure_chat_template
from ..modelling import compute_dtype, disable_cpu_4bit_repacking, load_tokenizer, quantization_config
from .protocol import AdapterSpec, BaseSpec, Generation, RequestError

log = logging.getLogger("tuning_trainer.serve")

# The model's context when its config names none.
DEFAULT_CONTEXT = 2048


@dataclass
class Loaded:
    """A base model in memory, with the adapters loaded onto it (most recently used last)."""

    spec: BaseSpec
    model: Any
    tokenizer: Any
    context: int
    eos: frozenset[int]
    cache_arg: str
    """The forward's name for the KV cache: `cache` (transformers >= 5.24) or `past_key_values`"""
    adapters: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    """adapter name -> its tokenizer (the chat template saved with the adapter)"""
    active: str | None = None
    last_used: float = field(default_factory=time.monotonic)

    @property
    def peft(self) -> bool:
        return bool(self.adapters)


@dataclass
class Stats:
    requests: int = 0
    cancelled: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_loads: int = 0
    model_unloads: int = 0
    adapter_loads: int = 0
    adapter_switches: int = 0
    adapter_evictions: int = 0
    load_seconds: float = 0.0
    """Loading base models (the weights; the libraries are imported at start-up)"""
    adapter_load_seconds: float = 0.0
    switch_seconds: float = 0.0
    """Activating an already loaded adapter (`set_adapter`)"""


class TransformersEngine:
    name = "transformers"

    def __init__(self, *, max_adapters: int = 8, idle_seconds: float = 600.0) -> None:
        self.max_adapters = max(1, max_adapters)
        self.idle_seconds = idle_seconds
        self.stats = Stats()
        self.models: dict[BaseSpec, Loaded] = {}
        self._queue: queue.Queue[Any] = queue.Queue()
        self._busy = False
        self.last_activity = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    # ---- the service's side (connection threads) ---------------------------------------------------------

    def submit(self, gen: Generation) -> None:
        gen.submitted = time.monotonic()
        self.last_activity = gen.submitted
        self._queue.put(gen)

    def evict(self, name: str) -> bool:
        """Drop a fine-tune's adapter wherever it is loaded (its model was deleted). Runs on the engine
        thread, between requests."""
        done: queue.Queue[bool] = queue.Queue()
        self.last_activity = time.monotonic()
        self._queue.put(("evict", name, done))
        return done.get()

    def snapshot(self) -> dict[str, Any]:
        for _ in range(5):  # the engine thread may change the models while this reads them
            try:
                return self._snapshot()
            except RuntimeError:
                time.sleep(0.001)
        return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            **self.stats.__dict__,
            "queued": self._queue.qsize(),
            "busy": self._busy,
            "loaded": [
                {"location": m.spec.location, "quantize": m.spec.quantize, "adapters": list(m.adapters)}
                for m in list(self.models.values())
            ],
        }

    def idle(self) -> bool:
        """Nothing loaded, nothing queued or running, for idle_seconds: the worker may exit."""
        return (
            not self.models
            and not self._busy
            and self._queue.empty()
            and time.monotonic() - self.last_activity >= self.idle_seconds
        )

    # ---- the engine thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        threads = int(os.environ.get("TUNING_INFERENCE_THREADS") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        # Imported now, while the socket already accepts requests: a model's load time is then the load. (A
        # failure here, e.g. transformers' lazy modules imported from two threads at once, is not fatal: the
        # first load imports them again.)
        self._guarded(_preload)

        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._guarded(self._unload_idle)
                continue
            self._busy = True
            try:
                if isinstance(item, tuple):
                    _, name, done = item
                    found = False
                    try:
                        found = self._guarded(partial(self._evict, name)) is True
                    finally:
                        done.put(found)  # the connection thread waits for this, whatever happened
                else:
                    self._guarded(partial(self._serve, item))
            finally:
                self._busy = False
                self.last_activity = time.monotonic()

    @staticmethod
    def _guarded(work: Any) -> Any:
        """Run one piece of the engine thread's work; a failure is logged, never the end of the thread (a
        dead engine thread would leave every later request waiting forever)."""
        try:
            return work()
        except Exception:
            log.exception("engine work failed")
            return None

    def _serve(self, gen: Generation) -> None:
        self.stats.requests += 1
        if gen.cancelled.is_set():
            self.stats.cancelled += 1
            return
        try:
            self._generate(gen)
        except RequestError as exc:
            self.stats.failed += 1
            gen.emit(exc.event())
        except Exception as exc:  # a failure of this request must not take the worker down
            self.stats.failed += 1
            log.exception("generation failed")
            gen.emit(RequestError(500, "generation_failed", f"{type(exc).__name__}: {exc}").event())

    # ---- models and adapters -----------------------------------------------------------------------------

    def _model(self, spec: BaseSpec) -> tuple[Loaded, float]:
        loaded = self.models.get(spec)
        if loaded is not None:
            return loaded, 0.0
        started = time.monotonic()
        loaded = self._load(spec)
        seconds = time.monotonic() - started
        self.models[spec] = loaded
        self.stats.model_loads += 1
        self.stats.load_seconds += seconds
        log.info("loaded %s%s in %.2f s", spec.location, " (4-bit)" if spec.quantize else "", seconds)
        return loaded, seconds

    def _load(self, spec: BaseSpec) -> Loaded:
        from transformers import AutoModelForCausalLM

        dtype = compute_dtype(self.device)
        kwargs: dict[str, Any] = {"dtype": dtype}
        kwargs["device_map"] = {"": 0} if self.device.type == "cuda" else {"": "cpu"}
        if spec.quantize:
            kwargs["quantization_config"] = quantization_config(dtype, self.device)
        try:
            model = AutoModelForCausalLM.from_pretrained(spec.location, **kwargs)
            tokenizer = load_tokenizer(spec.location)
        except (OSError, ValueError) as exc:
            raise RequestError(
                500, "model_load_failed", f"model {spec.location!r} could not be loaded: {exc}"
            ) from None
        if spec.quantize:
            disable_cpu_4bit_repacking(model)
        model.eval()
        ensure_chat_template(tokenizer)
        cfg = model.config
        context = int(getattr(cfg, "max_position_embeddings", 0) or DEFAULT_CONTEXT)
        eos = _eos_ids(model, tokenizer)
        takes = inspect.signature(type(model).forward).parameters
        return Loaded(
            spec, model, tokenizer, context, eos, "cache" if "cache" in takes else "past_key_values"
        )

    def _activate(self, loaded: Loaded, adapter: AdapterSpec | None) -> tuple[Any, bool]:
        """Make `adapter` (or the bare base) the active weights; returns (its tokenizer, switched)."""
        if adapter is None:
            switched = loaded.active is not None
            loaded.active = None
            return loaded.tokenizer, switched
        if adapter.name not in loaded.adapters:
            self._load_adapter(loaded, adapter)
        else:
            loaded.adapters.move_to_end(adapter.name)
        switched = loaded.active != adapter.name
        if switched:
            started = time.monotonic()
            loaded.model.set_adapter(adapter.name)
            self.stats.adapter_switches += 1
            self.stats.switch_seconds += time.monotonic() - started
        loaded.active = adapter.name
        return loaded.adapters[adapter.name], switched

    def _load_adapter(self, loaded: Loaded, adapter: AdapterSpec) -> None:
        if not os.path.isfile(os.path.join(adapter.path, "adapter_config.json")):
            raise RequestError(404, "model_not_found", f"the adapter of {adapter.name} is no longer on disk")
        started = time.monotonic()
        if not loaded.peft:
            from peft import PeftModel

            loaded.model = PeftModel.from_pretrained(
                loaded.model, adapter.path, adapter_name=adapter.name, is_trainable=False
            )
        else:
            loaded.model.load_adapter(adapter.path, adapter_name=adapter.name, is_trainable=False)
        loaded.model.eval()
        loaded.adapters[adapter.name] = adapter_tokenizer(adapter.path, loaded.tokenizer)
        # Room is made after loading: peft keeps at least one adapter on a model.
        while len(loaded.adapters) > self.max_adapters:
            self._drop_adapter(loaded, next(iter(loaded.adapters)))
        self.stats.adapter_loads += 1
        self.stats.adapter_load_seconds += time.monotonic() - started
        log.info("adapter %s loaded from %s", adapter.name, adapter.path)

    def _drop_adapter(self, loaded: Loaded, name: str) -> None:
        if loaded.active == name or loaded.model.active_adapter == name:
            other = next(n for n in loaded.adapters if n != name)
            loaded.model.set_adapter(other)
            loaded.active = None if loaded.active == name else loaded.active
        loaded.model.delete_adapter(name)
        del loaded.adapters[name]
        self.stats.adapter_evictions += 1

    def _evict(self, name: str) -> bool:
        found = False
        for spec, loaded in list(self.models.items()):
            if name not in loaded.adapters:
                continue
            found = True
            if len(loaded.adapters) > 1:
                self._drop_adapter(loaded, name)
            else:  # peft keeps at least one adapter: drop the whole model, it reloads on demand
                self.stats.adapter_evictions += 1
                self._unload(spec)
        return found

    def _unload(self, spec: BaseSpec) -> None:
        self.models.pop(spec, None)
        self.stats.model_unloads += 1
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _unload_idle(self) -> None:
        now = time.monotonic()
        for spec, loaded in list(self.models.items()):
            if now - loaded.last_used >= self.idle_seconds:
                log.info("unloading %s after %.0f s idle", spec.location, now - loaded.last_used)
                self._unload(spec)

    # ---- generation --------------------------------------------------------------------------------------

    def _generate(self, gen: Generation) -> None:
        queued = time.monotonic() - gen.submitted
        loaded, load_seconds = self._model(gen.base)
        loaded.last_used = time.monotonic()
        tokenizer, switched = self._activate(loaded, gen.adapter)
        prompts = encode(gen, tokenizer, loaded.context)
        n = int(gen.sampling.get("n") or 1)
        budgets = [budget(gen, len(ids), loaded.context) for ids in prompts]
        prompt_tokens = sum(len(ids) for ids in prompts)
        gen.emit(
            {
                "type": "start",
                "prompt_tokens": prompt_tokens,
                "queued_seconds": round(queued, 4),
                "load_seconds": round(load_seconds, 4),
                "switched": switched,
            }
        )
        completion_tokens = 0
        for p, ids in enumerate(prompts):
            made = self._decode(gen, loaded, tokenizer, ids, budgets[p], first_index=p * n)
            completion_tokens += made
            self.stats.prompt_tokens += len(ids)
            self.stats.completion_tokens += made
            if gen.cancelled.is_set():
                self.stats.cancelled += 1
                return
        loaded.last_used = time.monotonic()
        gen.emit(
            {
                "type": "done",
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            }
        )

    def _decode(
        self,
        gen: Generation,
        loaded: Loaded,
        tokenizer: Any,
        ids: list[int],
        max_new: int,
        *,
        first_index: int,
    ) -> int:
        import torch

        s = gen.sampling
        n = int(s.get("n") or 1)
        rows = [_Row(first_index + i, tokenizer, list(s.get("stop") or [])) for i in range(n)]
        top = gen.logprobs
        want_logprobs = top is not None
        device = next(loaded.model.parameters()).device
        generator = None
        if s.get("seed") is not None:
            generator = torch.Generator(device=device).manual_seed(int(s["seed"]))
        scoring = gen.echo and want_logprobs
        with torch.inference_mode(), _adapters_off(loaded, gen.adapter is None):
            # n identical rows from the start: each choice then samples on its own. Scoring the prompt needs
            # every position's logits: one row of them (n rows could be gigabytes).
            prompt = torch.tensor([ids] * n, device=device)
            scored = loaded.model(input_ids=prompt[:1], logits_to_keep=0) if scoring and n > 1 else None
            out = loaded.model(
                input_ids=prompt, use_cache=True, logits_to_keep=0 if scoring and n == 1 else 1
            )
            if gen.echo:
                full = (scored if scored is not None else out).logits[0]
                texts = echo_texts(tokenizer, ids)
                echo = _echo_logprobs(tokenizer, ids, full, top or 0, texts) if scoring else None
                text = "".join(texts)
                for row in rows:
                    row.prefix = text
                    gen.emit({"type": "echo", "index": row.index, "text": text, "logprobs": echo})
            logits = out.logits[:, -1, :].float()
            past = _cache_of(out)
            counts = torch.zeros(logits.shape, device=device) if _penalised(s) else None
            for _ in range(max_new):
                if gen.cancelled.is_set():
                    return sum(r.generated for r in rows)
                logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
                chosen = _pick(logits, counts, s, generator)
                picked = chosen.tolist()
                entries = (
                    _logprob_entries(tokenizer, logprobs, picked, top or 0) if logprobs is not None else None
                )
                for i, row in enumerate(rows):
                    if row.done:
                        continue
                    token = picked[i]
                    if token in loaded.eos or token == tokenizer.eos_token_id:
                        row.finish(gen, "stop")
                        continue
                    row.add(gen, token, None if entries is None else entries[i])
                if all(r.done for r in rows):
                    break
                if counts is not None:
                    counts[torch.arange(n, device=device), chosen] += 1
                out = loaded.model(
                    input_ids=chosen[:, None], use_cache=True, logits_to_keep=1, **{loaded.cache_arg: past}
                )
                logits, past = out.logits[:, -1, :].float(), _cache_of(out)
            for row in rows:
                if not row.done:
                    row.finish(gen, "length")
        return sum(r.generated for r in rows)


# ---- shared with the vLLM engine -------------------------------------------------------------------------


def encode(gen: Generation, tokenizer: Any, context: int) -> list[list[int]]:
    """The prompts' token ids (a chat rendered with the tokenizer's template), checked against the context."""
    if gen.kind == "chat":
        try:
            text = tokenizer.apply_chat_template(gen.messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # a template that refuses these messages (e.g. roles out of order)
            raise RequestError(
                400, "invalid_request", f"the chat template refused: {exc}", "messages"
            ) from None
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        prompts = [ids]
    else:
        prompts = [list(tokenizer(p)["input_ids"]) for p in gen.prompts or []]
    param = "messages" if gen.kind == "chat" else "prompt"
    for ids in prompts:
        if not ids:
            raise RequestError(400, "invalid_request", f"{param} is empty once tokenised", param)
        if len(ids) > context - (0 if gen.echo else 1):
            raise RequestError(
                400,
                "context_length_exceeded",
                f"{param} is {len(ids)} tokens; this model's context is {context} tokens",
                param,
            )
    return prompts


def budget(gen: Generation, prompt_len: int, context: int) -> int:
    """How many tokens a prompt may be followed by: max_tokens, or the rest of the context."""
    room = context - prompt_len
    if gen.max_tokens is None:
        return room
    if gen.max_tokens > room:
        raise RequestError(
            400,
            "context_length_exceeded",
            f"the prompt ({prompt_len} tokens) and max_tokens ({gen.max_tokens}) exceed this model's "
            f"context of {context} tokens; ask for at most {room}",
            "max_tokens",
        )
    return int(gen.max_tokens)


def adapter_tokenizer(path: str, fallback: Any) -> Any:
    """The tokenizer saved with an adapter (its chat template), else the base's."""
    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError):
        tokenizer = fallback
    ensure_chat_template(tokenizer)
    return tokenizer


class _adapters_off:
    """The base alone: peft's adapters disabled for the request (nothing to do on a bare model)."""

    def __init__(self, loaded: Loaded, off: bool) -> None:
        self._ctx = loaded.model.disable_adapter() if off and loaded.peft else None

    def __enter__(self) -> None:
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


class _Row:
    """One choice being generated: its tokens, its text, what has been sent, and the stop sequences."""

    def __init__(self, index: int, tokenizer: Any, stops: list[str]) -> None:
        self.index = index
        self.tokenizer = tokenizer
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.tokens: list[int] = []
        self.sent = 0
        self.done = False
        self.prefix = ""
        self.decoded = ""
        self.pending: list[Any] = []

    @property
    def generated(self) -> int:
        return len(self.tokens)

    def add(self, gen: Generation, token: int, logprob: Any) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if logprob is not None:
            # The token as it reads in the text (a lone SentencePiece token loses its leading space; a piece
            # of a multi-byte character reads as nothing until the character is whole).
            logprob["token"] = _settled(text)[len(_settled(self.decoded)) :]
            self.pending.append(logprob)
        self.decoded = text
        cut = _first_stop(text, self.stops, self.sent)
        if cut is not None:
            self._send(gen, text[self.sent : cut])
            self._finish(gen, "stop")
            return
        # Hold back what could begin a stop sequence, and a character still being assembled from bytes.
        safe = len(text) - self.hold
        while safe > self.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        if safe > self.sent or self.pending:
            self._send(gen, text[self.sent : max(safe, self.sent)])

    def finish(self, gen: Generation, reason: str) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True) if self.tokens else ""
        self._send(gen, text[self.sent :])
        self._finish(gen, reason)

    def _send(self, gen: Generation, text: str) -> None:
        if not text and not self.pending:
            return
        gen.emit({"type": "delta", "index": self.index, "text": text, "logprobs": self.pending or None})
        self.sent += len(text)
        self.pending = []

    def _finish(self, gen: Generation, reason: str) -> None:
        self.done = True
        gen.emit(
            {"type": "finish", "index": self.index, "reason": reason, "completion_tokens": self.generated}
        )


def _first_stop(text: str, stops: list[str], sent: int) -> int | None:
    """Where the earliest stop sequence begins (searching only where a new one can be), or None."""
    best = None
    for s in stops:
        at = text.find(s, max(0, sent - len(s) + 1))
        if at >= 0 and (best is None or at < best):
            best = at
    return best


def _penalised(s: dict[str, Any]) -> bool:
    return bool(s.get("presence_penalty") or s.get("frequency_penalty"))


def _pick(logits: Any, counts: Any, s: dict[str, Any], generator: Any) -> Any:
    import torch

    if counts is not None:
        logits = logits - float(s.get("frequency_penalty") or 0) * counts
        logits = logits - float(s.get("presence_penalty") or 0) * (counts > 0).float()
    temperature = float(s.get("temperature", 1.0))
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    top_p = float(s.get("top_p", 1.0))
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep each token whose predecessors add up to less than top_p (the first one always).
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def token_text(tokenizer: Any, token: int) -> str:
    return str(tokenizer.decode([token], skip_special_tokens=False))


def _logprob_entries(tokenizer: Any, logprobs: Any, picked: list[int], top: int) -> list[dict[str, Any]]:
    out = []
    best = logprobs.topk(top, dim=-1) if top else None
    for i, token in enumerate(picked):
        alts = []
        if best is not None:
            alts = [
                [token_text(tokenizer, int(t)), float(v)]
                for v, t in zip(best.values[i].tolist(), best.indices[i].tolist(), strict=True)
            ]
        out.append({"token": token_text(tokenizer, token), "logprob": float(logprobs[i, token]), "top": alts})
    return out


def _echo_logprobs(
    tokenizer: Any, ids: list[int], logits: Any, top: int, texts: list[str]
) -> list[dict[str, Any]]:
    """The prompt's own log probabilities: each token given the ones before it (none for the first), each
    token named as it reads in the echoed text, so that the text offsets add up."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    out: list[dict[str, Any]] = [{"token": "", "logprob": None, "top": []}]
    if len(ids) > 1:
        out += _logprob_entries(tokenizer, logprobs[:-1], ids[1:], top)
    for entry, text in zip(out, texts, strict=True):
        entry["token"] = text
    return out


def _settled(text: str) -> str:
    """Text without a trailing character still being assembled from bytes."""
    return text.rstrip("\ufffd")


def echo_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each prompt token's text in the echoed prompt: special tokens written in the prompt (a chat template's
    markers) read as themselves, so that the echo is the prompt and offsets count in it; tokens the tokenizer
    added on its own (a BOS) read as nothing."""
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    added = 0
    while (
        added < len(ids) and ids[added] in special and ids[added] == getattr(tokenizer, "bos_token_id", None)
    ):
        added += 1
    return [""] * added + _token_texts(tokenizer, ids[added:], skip_special_tokens=False)


def _token_texts(
    tokenizer: Any, ids: list[int], window: int = 6, *, skip_special_tokens: bool = True
) -> list[str]:
    """Each token's text as it reads in `decode(ids)`: what it adds to a few tokens before it (a window, so
    that a long prompt is not decoded once per token; the token is never the window's first, whose leading
    space a SentencePiece decode would drop)."""
    out = []
    for i in range(len(ids)):
        start = max(0, i - window)
        skip = skip_special_tokens
        before = _settled(tokenizer.decode(ids[start:i], skip_special_tokens=skip)) if i > start else ""
        upto = _settled(tokenizer.decode(ids[start : i + 1], skip_special_tokens=skip))
        out.append(upto[len(before) :])
    return out


def _preload() -> None:
    import peft  # noqa: F401
    import transformers  # noqa: F401


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    found: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        found.add(int(tokenizer.eos_token_id))
    return frozenset(found)

"""The vLLM inference engine: the TransformersEngine's interface and events, served by vLLM's async engine.

Targets vLLM's V1 `AsyncLLM` (`vllm.v1.engine.async_llm`: the default engine since vLLM 0.8, the only one in
current releases), built with `from_engine_args(AsyncEngineArgs(...))` and driven with `generate` (token-id
prompts, `SamplingParams` with `output_kind=DELTA`, a `LoRARequest`), `abort`, `add_lora`, `remove_lora`
and `shutdown`; a vLLM without it falls back to `vllm.AsyncLLMEngine`, which takes the same calls.
vLLM is imported on the engine's own thread at the first request, never when this module is imported: the
worker listens on its socket before anything heavy loads, and without vLLM installed `VLLMEngine(...)`
raises an ImportError naming the fix.

One asyncio event loop, on a thread of its own, owns every vLLM engine; `submit` hands it a request and
returns. Requests run concurrently (vLLM batches them), where the transformers engine runs one at a time:
- One vLLM engine per base model (`BaseSpec`: a location, 4-bit or not), made on the first request for it
  (a 4-bit one with vLLM's in-flight bitsandbytes quantization, NF4 as QLoRA trained on). vLLM takes
  `TUNING_INFERENCE_GPU_MEMORY` (default 0.85) of the GPU up front, so the engines of other bases are
  drained (their running requests finish, new ones wait) and unloaded first unless all fit within the GPU.
- LoRA: every engine has `enable_lora`, `max_loras` = `max_cpu_loras` = max_adapters, and `max_lora_rank`
  (fixed when the engine starts, and it costs GPU memory for each of the max_loras slots) the larger of
  DEFAULT_MAX_LORA_RANK (64: every rank up to 64 is served without a restart) and the first adapter's rank
  rounded up to one vLLM accepts. An adapter of a larger rank than the running engine's restarts that
  engine (drained first) with the larger rank. Adapters are vLLM `LoRARequest`s (the fine-tune's name, a
  stable int id per name, its folder), added with `add_lora` on first use (counted as `adapter_loads`),
  the most recent `max_adapters` kept per base as in the transformers engine (vLLM's own LRU has the same
  size); `adapter_switches` counts a request whose adapter differs from the previous request's on that base
  (vLLM itself mixes adapters within a batch, so a switch costs nothing). `evict` removes one with
  `remove_lora` (once no running request uses it).
- Prompts are tokenised here, exactly as the transformers engine does (the adapter folder's chat template,
  falling back to the base's, then `ensure_chat_template`), and given to vLLM as token ids, with the same
  context checks and errors; the context is vLLM's `max_model_len` (the model's own by default).
- Output streams as vLLM's DELTA outputs: text deltas (vLLM's incremental detokenizer, holding back what
  could begin a stop sequence, which is not included in the text), `finish` "stop" or "length" as vLLM
  reports it. The EOS / stop token that ends a choice is neither counted in completion_tokens nor given a
  logprobs entry, as in the transformers engine.
- Log probabilities are vLLM's `raw_logprobs` (the V1 default, asked for explicitly where the engine has
  `logprobs_mode`): the model's own distribution before temperature, penalties and top-p, as the
  transformers engine, OpenAI and vLLM's server report them. (vLLM's old V0 engine reported them after
  temperature and penalties; none of that applies at temperature 1 without penalties.) Token strings are
  this engine's tokenizer's, as the transformers engine writes them. `echo` scores the prompt with vLLM's
  `prompt_logprobs` (none for the first token); `max_tokens` 0 asks vLLM for one token and drops it.
- A cancelled request (the client hung up: `gen.cancelled`) is noticed within CANCEL_POLL_SECONDS, also
  while it waits for a model, and its vLLM requests are aborted (`abort`).
- A base unused for `idle_seconds` is unloaded (its engine shut down, which ends vLLM's engine process and
  frees its GPU memory); `idle()` is true once nothing is loaded, running or waiting for that long.

Engines are built on the event loop's thread, as vLLM's own server builds them (inside its running loop):
a load (a minute or more with vLLM's compilation) stalls the other requests' streaming, their cancels and
`evict` for its duration, as a load holds up everything in the transformers engine.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import gc
import importlib.util
import inspect
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..dataset import ensure_chat_template
from ..modelling import load_tokenizer
from .engine import DEFAULT_CONTEXT, Stats, adapter_tokenizer, budget, encode, token_text
from .protocol import AdapterSpec, BaseSpec, Generation, RequestError

log = logging.getLogger("tuning_trainer.serve")

MISSING_VLLM = (
    "the vllm inference engine needs vLLM, which is not installed in this environment: install it "
    "(pip install vllm, on a machine with a CUDA GPU) or use TUNING_INFERENCE_ENGINE=transformers"
)
# The ranks vLLM's LoRAConfig accepts as max_lora_rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 64
DEFAULT_GPU_MEMORY = 0.85
CANCEL_POLL_SECONDS = 0.05


def vllm_installed() -> bool:
    """Whether `import vllm` can work, without importing it."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # a module in sys.modules without a spec
        return sys.modules.get("vllm") is not None


def gpu_memory_fraction() -> float:
    raw = os.environ.get("TUNING_INFERENCE_GPU_MEMORY", "").strip()
    if not raw:
        return DEFAULT_GPU_MEMORY
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise ValueError(f"TUNING_INFERENCE_GPU_MEMORY must be a fraction in (0, 1], not {raw!r}")
    return value


def lora_rank(adapter: AdapterSpec) -> int:
    """The largest LoRA rank in an adapter's adapter_config.json (`r` and any `rank_pattern`)."""
    path = os.path.join(adapter.path, "adapter_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise RequestError(
            404, "model_not_found", f"the adapter of {adapter.name} is no longer on disk"
        ) from None
    except (OSError, ValueError) as exc:
        raise RequestError(
            500, "model_load_failed", f"the adapter of {adapter.name} could not be read: {exc}"
        ) from None
    ranks = [int(cfg.get("r") or 8)]
    pattern = cfg.get("rank_pattern")
    if isinstance(pattern, dict):
        ranks += [int(v) for v in pattern.values()]
    return max(ranks)


def vllm_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that serves `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise RequestError(
        500,
        "model_load_failed",
        f"a LoRA rank of {rank} is larger than vLLM serves ({VLLM_LORA_RANKS[-1]})",
    )


def logprob_entry(tokenizer: Any, token: int, position: Mapping[int, Any] | None, top: int) -> dict[str, Any]:
    """One protocol logprobs entry from vLLM's {token id: Logprob} of a position (the token and its top)."""
    chosen = position.get(token) if position else None
    alts: list[list[Any]] = []
    if position and top:
        best = sorted(position.items(), key=lambda kv: -float(kv[1].logprob))[:top]
        alts = [[token_text(tokenizer, int(t)), float(lp.logprob)] for t, lp in best]
    return {
        "token": token_text(tokenizer, token),
        "logprob": None if chosen is None else float(chosen.logprob),
        "top": alts,
    }


def echo_entries(tokenizer: Any, ids: list[int], prompt_logprobs: Any, top: int) -> list[dict[str, Any]]:
    """The prompt's log probabilities from vLLM's prompt_logprobs (None for the first token)."""
    positions = list(prompt_logprobs) if prompt_logprobs is not None else []
    out: list[dict[str, Any]] = [{"token": token_text(tokenizer, ids[0]), "logprob": None, "top": []}]
    for i in range(1, len(ids)):
        out.append(logprob_entry(tokenizer, ids[i], positions[i] if i < len(positions) else None, top))
    return out


@dataclass
class _Base:
    """A base model's vLLM engine, with the adapters in use on it (most recently used last)."""

    spec: BaseSpec
    engine: Any
    tokenizer: Any
    context: int
    max_lora_rank: int
    adapters: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    """adapter name -> its tokenizer (the chat template saved with the adapter)"""
    active: str | None = None
    """the adapter of the previous request on this base (None: the bare base)"""
    last_used: float = field(default_factory=time.monotonic)
    inflight: int = 0
    using: Counter[str] = field(default_factory=Counter)
    """adapter name -> requests running with it"""
    doomed: set[str] = field(default_factory=set)
    """adapters dropped while in use: removed from vLLM once their last request ends"""
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    """set while no request runs on this base"""

    def __post_init__(self) -> None:
        self.drained.set()


@dataclass
class _Running:
    """One request's hold on the engine: its base and adapter once acquired, and its vLLM requests."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    base: _Base | None = None
    adapter: str | None = None
    started: bool = False
    """holding its base (counted as running, no longer as queued)"""


class VLLMEngine:
    name = "vllm"

    def __init__(self, *, max_adapters: int = 8, idle_seconds: float = 600.0) -> None:
        if not vllm_installed():
            raise ImportError(MISSING_VLLM)
        self.max_adapters = max(1, max_adapters)
        self.idle_seconds = idle_seconds
        self.gpu_memory = gpu_memory_fraction()
        self.stats = Stats()
        self.last_activity = time.monotonic()
        self.models: dict[BaseSpec, _Base] = {}
        self._lora_ids: dict[str, int] = {}
        self._counts = threading.Lock()
        self._queued = 0
        self._running = 0
        self._vllm: SimpleNamespace | None = None
        self._tick = min(1.0, max(0.02, idle_seconds / 4))
        self._loop = asyncio.new_event_loop()
        self._lock = asyncio.Lock()  # loads, swaps and restarts of engines, one at a time
        self._loading = False
        self._jobs: dict[asyncio.Future[None], Generation] = {}
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()
        atexit.register(self._shutdown_engines)

    # ---- the service's side (connection threads) ---------------------------------------------------------

    def submit(self, gen: Generation) -> None:
        gen.submitted = time.monotonic()
        self.last_activity = gen.submitted
        with self._counts:
            self._queued += 1
        asyncio.run_coroutine_threadsafe(self._serve(gen), self._loop)

    def evict(self, name: str) -> bool:
        """Drop a fine-tune's adapter wherever it is loaded (its model was deleted)."""
        return asyncio.run_coroutine_threadsafe(self._evict(name), self._loop).result()

    def snapshot(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            **self.stats.__dict__,
            "queued": self._queued,
            "busy": self._running > 0 or self._loading,
            "loaded": [
                {"location": m.spec.location, "quantize": m.spec.quantize, "adapters": list(m.adapters)}
                for m in list(self.models.values())
            ],
        }

    def idle(self) -> bool:
        """Nothing loaded, nothing queued or running, for idle_seconds: the worker may exit."""
        return (
            not self.models
            and self._running == 0
            and self._queued == 0
            and not self._loading
            and time.monotonic() - self.last_activity >= self.idle_seconds
        )

    def close(self, timeout: float = 60.0) -> None:
        """Shut every engine down and stop the event loop (tests; the worker just exits)."""
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._unload_all(), self._loop)
        try:
            future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            atexit.unregister(self._shutdown_engines)

    # ---- the event loop's thread -------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.create_task(self._housekeeping())
        self._loop.create_task(self._watch_cancels())
        try:
            self._loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def _shutdown_engines(self) -> None:
        """At interpreter exit: end vLLM's engine processes (their own parent-death watch is the backstop)."""
        for base in list(self.models.values()):
            try:
                base.engine.shutdown()
            except Exception:
                pass

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                await self._unload_idle()
            except Exception:
                log.exception("unloading idle models failed")

    async def _unload_idle(self) -> None:
        if self._lock.locked():
            return
        async with self._lock:
            now = time.monotonic()
            for spec, base in list(self.models.items()):
                if base.inflight == 0 and now - base.last_used >= self.idle_seconds:
                    log.info("unloading %s after %.0f s idle", spec.location, now - base.last_used)
                    await self._unload(spec)

    async def _watch_cancels(self) -> None:
        """Cancel the job of each request whose client hung up (its streams abort their vLLM requests)."""
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            for job, gen in list(self._jobs.items()):
                if gen.cancelled.is_set():
                    del self._jobs[job]  # once: a second cancel would cut its streams' aborts short
                    job.cancel()

    async def _serve(self, gen: Generation) -> None:
        self.stats.requests += 1
        run = _Running()
        job: asyncio.Future[None] | None = None
        try:
            if gen.cancelled.is_set():
                self.stats.cancelled += 1
                return
            job = asyncio.ensure_future(self._generate(gen, run))
            self._jobs[job] = gen
            try:
                await job
            except asyncio.CancelledError:
                if not gen.cancelled.is_set() or not job.cancelled():
                    raise  # the loop is closing
                self.stats.cancelled += 1
        except RequestError as exc:
            self.stats.failed += 1
            gen.emit(exc.event())
        except Exception as exc:  # a failure of this request must not take the worker down
            self.stats.failed += 1
            log.exception("generation failed")
            gen.emit(RequestError(500, "generation_failed", f"{type(exc).__name__}: {exc}").event())
        finally:
            if job is not None:
                self._jobs.pop(job, None)
            with self._counts:
                if run.started:
                    self._running -= 1
                else:
                    self._queued -= 1
            if run.base is not None:
                self._release(run.base, run.adapter)
            self.last_activity = time.monotonic()

    # ---- engines and adapters ----------------------------------------------------------------------------

    def _import_vllm(self) -> SimpleNamespace:
        if self._vllm is None:
            try:
                from vllm.engine.arg_utils import AsyncEngineArgs
                from vllm.lora.request import LoRARequest
                from vllm.sampling_params import RequestOutputKind, SamplingParams

                try:
                    from vllm.v1.engine.async_llm import AsyncLLM as engine_class
                except ImportError:
                    from vllm import AsyncLLMEngine as engine_class
            except ImportError as exc:
                raise RequestError(500, "model_load_failed", f"vLLM could not be imported: {exc}") from None
            self._vllm = SimpleNamespace(
                AsyncEngineArgs=AsyncEngineArgs,
                LoRARequest=LoRARequest,
                RequestOutputKind=RequestOutputKind,
                SamplingParams=SamplingParams,
                engine_class=engine_class,
            )
        return self._vllm

    def _lora_request(self, adapter: AdapterSpec) -> Any:
        lora_id = self._lora_ids.setdefault(adapter.name, len(self._lora_ids) + 1)  # vLLM's ids start at 1
        return self._import_vllm().LoRARequest(
            lora_name=adapter.name, lora_int_id=lora_id, lora_path=adapter.path
        )

    async def _acquire(self, gen: Generation, run: _Running) -> tuple[_Base, Any, bool, float]:
        """The request's base engine (loaded if need be) with its adapter active on it: (base, tokenizer,
        switched, load seconds). Recorded on `run` as soon as held, so that the caller releases it."""
        async with self._lock:
            rank = lora_rank(gen.adapter) if gen.adapter is not None else 0
            base = self.models.get(gen.base)
            if base is not None and rank > base.max_lora_rank:
                log.info(
                    "restarting %s for a LoRA rank of %d (it serves up to %d)",
                    gen.base.location,
                    rank,
                    base.max_lora_rank,
                )
                await self._retire(base)
                base = None
            load_seconds = 0.0
            if base is None:
                await self._make_room()
                base, load_seconds = await self._load(gen.base, rank)
            base.inflight += 1
            base.drained.clear()
            base.last_used = time.monotonic()
            run.base = base
            with self._counts:
                self._queued -= 1
                self._running += 1
            run.started = True
            tokenizer, switched = await self._activate(base, gen.adapter)
            if gen.adapter is not None:
                base.using[gen.adapter.name] += 1
                run.adapter = gen.adapter.name
        return base, tokenizer, switched, load_seconds

    def _release(self, base: _Base, adapter: str | None) -> None:
        base.inflight -= 1
        base.last_used = time.monotonic()
        if adapter is not None:
            base.using[adapter] -= 1
            if base.using[adapter] <= 0:
                del base.using[adapter]
                if adapter in base.doomed:
                    base.doomed.discard(adapter)
                    if adapter not in base.adapters:
                        self._loop.create_task(self._remove_lora(base, adapter))
        if base.inflight <= 0:
            base.drained.set()

    async def _retire(self, base: _Base) -> None:
        """Let a base's running requests finish (new ones wait on the lock), then unload it."""
        await base.drained.wait()
        await self._unload(base.spec)

    async def _make_room(self) -> None:
        """Unload (least recently used first) the engines that a new one would not fit beside."""
        while self.models and (len(self.models) + 1) * self.gpu_memory > 1.0 + 1e-9:
            oldest = min(self.models.values(), key=lambda b: b.last_used)
            log.info("unloading %s to make room on the GPU", oldest.spec.location)
            await self._retire(oldest)

    async def _load(self, spec: BaseSpec, adapter_rank: int) -> tuple[_Base, float]:
        vllm = self._import_vllm()
        started = time.monotonic()
        self._loading = True
        try:
            try:
                tokenizer = await asyncio.to_thread(load_tokenizer, spec.location)
            except (OSError, ValueError) as exc:
                raise RequestError(
                    500, "model_load_failed", f"model {spec.location!r} could not be loaded: {exc}"
                ) from None
            ensure_chat_template(tokenizer)
            max_rank = max(DEFAULT_MAX_LORA_RANK, vllm_rank(adapter_rank) if adapter_rank else 0)
            wanted: dict[str, Any] = {
                "model": spec.location,
                "enable_lora": True,
                "max_loras": self.max_adapters,
                "max_cpu_loras": self.max_adapters,
                "max_lora_rank": max_rank,
                "gpu_memory_utilization": self.gpu_memory,
                "logprobs_mode": "raw_logprobs",
                "disable_log_stats": True,
                "enable_log_requests": False,
                "disable_log_requests": True,  # the name before vLLM 0.10.2
            }
            if spec.quantize:
                # In-flight 4-bit (NF4) quantization; load_format is implied from vLLM 0.8 and needed before.
                wanted.update(quantization="bitsandbytes", load_format="bitsandbytes")
            known = _fields(vllm.AsyncEngineArgs)
            args = vllm.AsyncEngineArgs(**{k: v for k, v in wanted.items() if known is None or k in known})
            try:
                engine = vllm.engine_class.from_engine_args(args)
            except Exception as exc:
                log.exception("vLLM could not load %s", spec.location)
                raise RequestError(
                    500,
                    "model_load_failed",
                    f"model {spec.location!r} could not be loaded by vLLM: {type(exc).__name__}: {exc}",
                ) from None
            try:
                context = await _context(engine, spec.location)
            except BaseException:  # a cancel, most likely: do not leave an engine nobody can unload
                await _call(engine.shutdown)
                raise
        finally:
            self._loading = False
        seconds = time.monotonic() - started
        base = _Base(spec, engine, tokenizer, context, max_rank)
        self.models[spec] = base
        self.stats.model_loads += 1
        self.stats.load_seconds += seconds
        log.info(
            "vLLM loaded %s%s in %.2f s (context %d, LoRA rank up to %d)",
            spec.location,
            " (4-bit)" if spec.quantize else "",
            seconds,
            context,
            max_rank,
        )
        return base, seconds

    async def _unload(self, spec: BaseSpec) -> None:
        base = self.models.pop(spec, None)
        if base is None:
            return
        self.stats.model_unloads += 1
        try:
            await _call(base.engine.shutdown)
        except Exception:
            log.exception("shutting down the vLLM engine of %s failed", spec.location)
        del base
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    async def _unload_all(self) -> None:
        for spec in list(self.models):
            await self._unload(spec)

    async def _activate(self, base: _Base, adapter: AdapterSpec | None) -> tuple[Any, bool]:
        """Make `adapter` (or the bare base) this request's weights; returns (its tokenizer, switched)."""
        if adapter is None:
            switched = base.active is not None
            base.active = None
            return base.tokenizer, switched
        if adapter.name not in base.adapters:
            await self._load_adapter(base, adapter)
        else:
            base.adapters.move_to_end(adapter.name)
        switched = base.active != adapter.name
        if switched:
            self.stats.adapter_switches += 1  # vLLM switches per batch row: nothing to time
        base.active = adapter.name
        return base.adapters[adapter.name], switched

    async def _load_adapter(self, base: _Base, adapter: AdapterSpec) -> None:
        started = time.monotonic()
        if len(base.adapters) >= self.max_adapters:
            await self._drop_adapter(base, next(iter(base.adapters)))
        base.doomed.discard(adapter.name)
        add = getattr(base.engine, "add_lora", None)
        if add is not None:
            try:
                await _call(add, self._lora_request(adapter))
            except Exception as exc:
                raise RequestError(
                    500,
                    "model_load_failed",
                    f"the adapter of {adapter.name} could not be loaded: {type(exc).__name__}: {exc}",
                ) from None
        tokenizer = await asyncio.to_thread(adapter_tokenizer, adapter.path, base.tokenizer)
        base.adapters[adapter.name] = tokenizer
        self.stats.adapter_loads += 1
        self.stats.adapter_load_seconds += time.monotonic() - started
        log.info("adapter %s loaded from %s", adapter.name, adapter.path)

    async def _drop_adapter(self, base: _Base, name: str) -> None:
        del base.adapters[name]
        if base.active == name:
            base.active = None
        self.stats.adapter_evictions += 1
        if base.using.get(name):
            base.doomed.add(name)  # removed once its running requests end
        else:
            await self._remove_lora(base, name)

    async def _remove_lora(self, base: _Base, name: str) -> None:
        remove = getattr(base.engine, "remove_lora", None)
        if remove is None or name not in self._lora_ids or base.spec not in self.models:
            return
        try:
            await _call(remove, self._lora_ids[name])
        except Exception:
            log.warning("vLLM could not remove the adapter %s", name, exc_info=True)

    async def _evict(self, name: str) -> bool:
        found = False
        for base in list(self.models.values()):
            if name in base.adapters:
                found = True
                await self._drop_adapter(base, name)
        return found

    # ---- generation --------------------------------------------------------------------------------------

    async def _generate(self, gen: Generation, run: _Running) -> None:
        base, tokenizer, switched, load_seconds = await self._acquire(gen, run)
        queued = max(0.0, time.monotonic() - gen.submitted - load_seconds)
        prompts = encode(gen, tokenizer, base.context)
        n = int(gen.sampling.get("n") or 1)
        budgets = [budget(gen, len(ids), base.context) for ids in prompts]
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
        lora = self._lora_request(gen.adapter) if gen.adapter is not None else None
        streams = [
            asyncio.ensure_future(
                self._stream(gen, base, tokenizer, lora, ids, budgets[p], f"{run.id}-{p}", first_index=p * n)
            )
            for p, ids in enumerate(prompts)
        ]
        completion_tokens = sum(await _all(streams))  # each stream counts its tokens in stats
        base.last_used = time.monotonic()
        gen.emit(
            {
                "type": "done",
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            }
        )

    def _sampling_params(self, gen: Generation, budget: int) -> Any:
        vllm = self._import_vllm()
        s = gen.sampling
        temperature = s.get("temperature")
        top_p = s.get("top_p")
        seed = s.get("seed")
        return vllm.SamplingParams(
            n=int(s.get("n") or 1),
            temperature=1.0 if temperature is None else float(temperature),
            top_p=1.0 if top_p is None else float(top_p),
            presence_penalty=float(s.get("presence_penalty") or 0.0),
            frequency_penalty=float(s.get("frequency_penalty") or 0.0),
            seed=None if seed is None else int(seed),
            stop=list(s.get("stop") or []) or None,
            max_tokens=max(1, budget),  # vLLM generates at least one token: with none asked, it is dropped
            logprobs=gen.logprobs,
            prompt_logprobs=gen.logprobs if gen.echo and gen.logprobs is not None else None,
            output_kind=vllm.RequestOutputKind.DELTA,
        )

    async def _stream(
        self,
        gen: Generation,
        base: _Base,
        tokenizer: Any,
        lora: Any,
        ids: list[int],
        budget: int,
        request_id: str,
        *,
        first_index: int,
    ) -> int:
        """Run one prompt's vLLM request and emit its choices' events; returns its completion tokens."""
        params = self._sampling_params(gen, budget)
        n = int(params.n)
        top = gen.logprobs or 0
        rows = [_Choice(first_index + j) for j in range(n)]
        scoring = gen.echo and gen.logprobs is not None
        echoed = not gen.echo
        if gen.echo and not scoring:  # nothing to wait for: the text goes first
            self._echo(gen, tokenizer, ids, rows, None)
            echoed = True
        finished = False
        stream = base.engine.generate({"prompt_token_ids": ids}, params, request_id, lora_request=lora)
        try:
            try:
                async for out in stream:
                    if not echoed:
                        echo = echo_entries(tokenizer, ids, getattr(out, "prompt_logprobs", None), top)
                        self._echo(gen, tokenizer, ids, rows, echo)
                        echoed = True
                    for completion in out.outputs:
                        rows[int(completion.index)].add(gen, tokenizer, completion, top, drop=budget == 0)
                    if out.finished:
                        finished = True
            except ValueError as exc:  # vLLM refused the request (its validation errors are ValueErrors)
                raise RequestError(400, "invalid_request", str(exc)) from None
            except asyncio.CancelledError:  # what a cancelled generation made still counts
                self._count(ids, rows)
                raise
        finally:
            if not finished:  # cancelled, or failed: make sure vLLM stops working on it
                aclose = getattr(stream, "aclose", None)
                try:
                    if aclose is not None:
                        await aclose()
                    await _call(base.engine.abort, request_id)
                except Exception:
                    log.debug("aborting %s failed", request_id, exc_info=True)
        for row in rows:
            if not row.done:  # vLLM ended the request without a reason (not expected)
                row.finish(gen, "length")
        return self._count(ids, rows)

    def _count(self, ids: list[int], rows: list[_Choice]) -> int:
        made = sum(r.generated for r in rows)
        self.stats.prompt_tokens += len(ids)
        self.stats.completion_tokens += made
        return made

    @staticmethod
    def _echo(gen: Generation, tokenizer: Any, ids: list[int], rows: list[_Choice], echo: Any) -> None:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        for row in rows:
            gen.emit({"type": "echo", "index": row.index, "text": text, "logprobs": echo})


class _Choice:
    """One choice's progress: the tokens counted and whether it finished."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.generated = 0
        self.done = False

    def add(self, gen: Generation, tokenizer: Any, completion: Any, top: int, *, drop: bool) -> None:
        if self.done:
            return
        reason = completion.finish_reason
        tokens = list(completion.token_ids or [])
        positions = list(completion.logprobs) if gen.logprobs is not None and completion.logprobs else []
        text = completion.text or ""
        if reason == "stop" and tokens and not isinstance(getattr(completion, "stop_reason", None), str):
            tokens = tokens[:-1]  # the EOS (or stop token) that ended it: not counted, no logprobs entry
        if drop:  # max_tokens 0: vLLM's one token is not part of the answer
            tokens, text, reason = [], "", "length" if reason is not None else None
        entries = (
            [
                logprob_entry(tokenizer, token, positions[i] if i < len(positions) else None, top)
                for i, token in enumerate(tokens)
            ]
            if gen.logprobs is not None
            else []
        )
        self.generated += len(tokens)
        if text or entries:
            gen.emit({"type": "delta", "index": self.index, "text": text, "logprobs": entries or None})
        if reason is not None:
            if reason not in ("stop", "length"):  # "abort" (not ours: ours end the stream first), "error"
                raise RequestError(500, "generation_failed", f"vLLM ended the generation: {reason}")
            self.finish(gen, reason)

    def finish(self, gen: Generation, reason: str) -> None:
        self.done = True
        gen.emit(
            {"type": "finish", "index": self.index, "reason": reason, "completion_tokens": self.generated}
        )


async def _all(tasks: Sequence[asyncio.Future[int]]) -> list[int]:
    """The tasks' results; on the first failure (or a cancel) the others are cancelled and awaited."""
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    if pending:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        failure = None if t.cancelled() else t.exception()
        if failure is not None:
            raise failure
    return [t.result() for t in tasks]


async def _call(fn: Any, *args: Any) -> Any:
    """Call a vLLM method that is a coroutine in some versions and plain in others."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _fields(cls: Any) -> set[str] | None:
    """The keyword arguments an engine-args class takes (None: unknown, pass everything)."""
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


async def _context(engine: Any, location: str) -> int:
    """vLLM's max_model_len for the engine (the model's own context unless told otherwise)."""
    config = getattr(engine, "model_config", None)
    if config is None and hasattr(engine, "get_model_config"):
        config = engine.get_model_config()
        if inspect.isawaitable(config):
            config = await config
    value = getattr(config, "max_model_len", None)
    if isinstance(value, int) and value > 0:
        return value
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(location)
        return int(getattr(cfg, "max_position_embeddings", 0) or DEFAULT_CONTEXT)
    except (OSError, ValueError):
        return DEFAULT_CONTEXT

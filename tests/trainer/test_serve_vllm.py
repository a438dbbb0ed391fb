"""The vLLM inference engine (tuning_trainer/serve/vllm_engine.py).

Here, without vLLM: a narrow stand-in for the few vLLM names the engine uses (an async engine whose
`generate` yields scripted DELTA outputs, and records its engine args, sampling params, LoRA requests,
aborts, add/remove_lora and shutdown) checks how the engine maps vLLM onto the worker's protocol: events,
indices, finish reasons, log probabilities, echo, usage, errors, cancellation, adapters and their counters,
eviction, engine restarts and idle unloading. Tokenizers are real (a small one trained here in a second).

On a GPU with vLLM installed, one test runs the real worker (`python -m tuning_trainer.serve --engine vllm`)
on the tiny model over its Unix socket, against the transformers engine's greedy answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import importlib.machinery
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from tuning_trainer.serve.protocol import Generation
from tuning_trainer.serve.vllm_engine import MISSING_VLLM, VLLMEngine

# ---- a stand-in for vLLM -----------------------------------------------------------------------------------


@dataclasses.dataclass
class FakeEngineArgs:
    """vllm.engine.arg_utils.AsyncEngineArgs: a dataclass (only the fields the engine may set, and one
    field name from another vLLM version is left out on purpose: `disable_log_requests`)."""

    model: str
    enable_lora: bool = False
    max_loras: int = 1
    max_cpu_loras: int | None = None
    max_lora_rank: int = 16
    gpu_memory_utilization: float = 0.9
    quantization: str | None = None
    load_format: str = "auto"
    logprobs_mode: str = "raw_logprobs"
    disable_log_stats: bool = False
    enable_log_requests: bool = False


@dataclasses.dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class RequestOutputKind(enum.IntEnum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


def lp(value: float, rank: int) -> SimpleNamespace:
    return SimpleNamespace(logprob=value, rank=rank, decoded_token=None)


ALTS = (10, 11)  # two other tokens in every position's logprobs


class FakeLLM:
    """vllm.v1.engine.async_llm.AsyncLLM, as far as the engine uses it."""

    instances: ClassVar[list[FakeLLM]] = []
    tokens: ClassVar[list[int]] = []  # what every choice generates (ending in EOS: finish "stop")
    tokenizer: ClassVar[Any] = None
    eos: ClassVar[int] = 0
    max_model_len: ClassVar[int] = 128
    delay: ClassVar[float] = 0.0
    fail_load: ClassVar[Exception | None] = None
    fail_generate: ClassVar[Exception | None] = None
    finish: ClassVar[tuple[str, Any]] = ("stop", None)  # the reason (and stop_reason) at the last token

    @classmethod
    def reset(cls) -> None:
        cls.instances = []
        cls.delay = 0.0
        cls.fail_load = cls.fail_generate = None
        cls.max_model_len = 128
        cls.finish = ("stop", None)

    def __init__(self, args: FakeEngineArgs) -> None:
        self.args = args
        self.model_config = SimpleNamespace(max_model_len=FakeLLM.max_model_len)
        self.requests: list[SimpleNamespace] = []
        self.aborted: list[str] = []
        self.added: list[FakeLoRARequest] = []
        self.removed: list[int] = []
        self.shut_down = False

    @classmethod
    def from_engine_args(cls, args: FakeEngineArgs) -> FakeLLM:
        if cls.fail_load is not None:
            raise cls.fail_load
        engine = cls(args)
        cls.instances.append(engine)
        return engine

    async def generate(
        self, prompt: dict[str, Any], sampling_params: Any, request_id: str, *, lora_request=None
    ):
        self.requests.append(
            SimpleNamespace(prompt=prompt, params=sampling_params, id=request_id, lora=lora_request)
        )
        if FakeLLM.fail_generate is not None:
            raise FakeLLM.fail_generate
        for out in self._script(prompt["prompt_token_ids"], sampling_params, request_id):
            await asyncio.sleep(FakeLLM.delay)
            yield out

    def _script(self, ids: list[int], params: Any, request_id: str) -> list[SimpleNamespace]:
        """Each choice generates FakeLLM.tokens (cut at max_tokens), the choices' outputs interleaved."""
        seqs: list[tuple[list[int], tuple[str, Any]]] = []
        for _ in range(params.n):
            toks, ending = list(FakeLLM.tokens), FakeLLM.finish
            if len(toks) > params.max_tokens:
                toks, ending = toks[: params.max_tokens], ("length", None)
            seqs.append((toks, ending))
        outs: list[SimpleNamespace] = []
        for step in range(max(len(t) for t, _ in seqs)):
            for j, (toks, (reason, stop_reason)) in enumerate(seqs):
                if step >= len(toks):
                    continue
                t, last = toks[step], step == len(toks) - 1
                logprobs = None
                if params.logprobs is not None:
                    logprobs = [{t: lp(-0.5, 1), ALTS[0]: lp(-1.5, 2), ALTS[1]: lp(-2.5, 3)}]
                completion = SimpleNamespace(
                    index=j,
                    text="" if t == FakeLLM.eos else FakeLLM.tokenizer.decode([t]),
                    token_ids=[t],
                    logprobs=logprobs,
                    finish_reason=reason if last else None,
                    stop_reason=stop_reason if last else None,
                )
                prompt_logprobs = None
                if not outs and params.prompt_logprobs is not None:
                    prompt_logprobs = [None] + [
                        {ids[i]: lp(-1.0, 3), ALTS[0]: lp(-0.25, 1), ALTS[1]: lp(-0.75, 2)}
                        for i in range(1, len(ids))
                    ]
                outs.append(
                    SimpleNamespace(
                        request_id=request_id,
                        prompt_token_ids=ids,
                        prompt_logprobs=prompt_logprobs,
                        outputs=[completion],
                        finished=False,
                    )
                )
        outs[-1].finished = True
        return outs

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def add_lora(self, request: FakeLoRARequest) -> bool:
        self.added.append(request)
        return True

    async def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return True

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real tokenizer with the tiny model's chat template (trained in about a second)."""
    from tuning_trainer.tiny import build_tokenizer, warmup_corpus

    out = tmp_path_factory.mktemp("base") / "tiny-tokenizer"
    build_tokenizer(warmup_corpus(200, 0)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tokenizer: Any) -> type[FakeLLM]:
    FakeLLM.reset()
    FakeLLM.tokenizer = tokenizer
    FakeLLM.eos = tokenizer.eos_token_id
    FakeLLM.tokens = [*tokenizer("moo moo", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    modules: dict[str, dict[str, Any]] = {
        "vllm": {"AsyncLLMEngine": FakeLLM, "SamplingParams": FakeSamplingParams},
        "vllm.engine": {},
        "vllm.engine.arg_utils": {"AsyncEngineArgs": FakeEngineArgs},
        "vllm.lora": {},
        "vllm.lora.request": {"LoRARequest": FakeLoRARequest},
        "vllm.sampling_params": {
            "SamplingParams": FakeSamplingParams,
            "RequestOutputKind": RequestOutputKind,
        },
        "vllm.v1": {},
        "vllm.v1.engine": {},
        "vllm.v1.engine.async_llm": {"AsyncLLM": FakeLLM},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__path__ = []  # type: ignore[attr-defined]
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("TUNING_INFERENCE_GPU_MEMORY", raising=False)
    return FakeLLM


@pytest.fixture
def engines(fake_vllm: type[FakeLLM]):
    made: list[VLLMEngine] = []

    def make(**kwargs: Any) -> VLLMEngine:
        kwargs.setdefault("max_adapters", 4)
        kwargs.setdefault("idle_seconds", 3600.0)
        engine = VLLMEngine(**kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close(10)


def make_adapter(
    root: Path, name: str, tokenizer_dir: Path, *, r: int = 8, template: str | None = None
) -> dict:
    """An adapter folder as the trainer saves one: adapter_config.json and the tokenizer (its template)."""
    from transformers import AutoTokenizer

    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 16, "peft_type": "LORA"}))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if template is not None:
        tok.chat_template = template
    tok.save_pretrained(path)
    return {"name": name, "path": str(path)}


def request(base: Path, **kw: Any) -> dict[str, Any]:
    sampling = {"temperature": 0.0, **kw.pop("sampling", {})}
    req = {
        "base": {"location": str(base), "quantize": kw.pop("quantize", False)},
        "adapter": kw.pop("adapter", None),
        "kind": kw.pop("kind", "completion"),
        "messages": kw.pop("messages", None),
        "prompts": kw.pop("prompts", ["the cat says"]),
        "max_tokens": kw.pop("max_tokens", None),
        "echo": kw.pop("echo", False),
        "logprobs": kw.pop("logprobs", None),
        "sampling": sampling,
    }
    assert not kw, kw
    return req


def run(engine: VLLMEngine, req: dict[str, Any], *, cancel_after: int | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    finished = threading.Event()

    def emit(event: dict[str, Any]) -> None:
        events.append(event)
        if cancel_after is not None and sum(e["type"] == "delta" for e in events) >= cancel_after:
            gen.cancelled.set()
            finished.set()
        if event["type"] in ("done", "error"):
            finished.set()

    gen = Generation.from_request(req, emit)
    engine.submit(gen)
    assert finished.wait(30), events
    if cancel_after is not None:
        wait_for(lambda: not engine.snapshot()["busy"] and engine.snapshot()["queued"] == 0)
    return events


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def texts(events: list[dict[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in events:
        if e["type"] in ("echo", "delta"):
            out[e["index"]] = out.get(e["index"], "") + e["text"]
    return out


# ---- without vLLM ------------------------------------------------------------------------------------------


def test_module_imports_without_vllm_or_torch() -> None:
    code = (
        "import sys, tuning_trainer.serve.vllm_engine\n"
        "assert 'vllm' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_vllm_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM looks like
    with pytest.raises(ImportError) as err:
        VLLMEngine(max_adapters=2, idle_seconds=60)
    assert str(err.value) == MISSING_VLLM
    assert "pip install vllm" in MISSING_VLLM and "TUNING_INFERENCE_ENGINE=transformers" in MISSING_VLLM


def test_a_bad_gpu_memory_setting_fails_at_start(fake_vllm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNING_INFERENCE_GPU_MEMORY", "85")
    with pytest.raises(ValueError, match="TUNING_INFERENCE_GPU_MEMORY"):
        VLLMEngine(max_adapters=2, idle_seconds=60)


# ---- engines -----------------------------------------------------------------------------------------------


def test_engine_args(engines, fake_vllm, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNING_INFERENCE_GPU_MEMORY", "0.4")
    engine = engines(max_adapters=3)
    assert of(run(engine, request(tokenizer_dir)), "done")
    assert of(run(engine, request(tokenizer_dir, quantize=True)), "done")
    plain, quantized = (e.args for e in fake_vllm.instances)
    assert plain == FakeEngineArgs(
        model=str(tokenizer_dir),
        enable_lora=True,
        max_loras=3,
        max_cpu_loras=3,
        max_lora_rank=64,
        gpu_memory_utilization=0.4,
        quantization=None,
        load_format="auto",
        logprobs_mode="raw_logprobs",
        disable_log_stats=True,
        enable_log_requests=False,
    )
    assert (quantized.quantization, quantized.load_format) == ("bitsandbytes", "bitsandbytes")
    snap = engine.snapshot()
    assert snap["engine"] == "vllm" and snap["model_loads"] == 2 and snap["model_unloads"] == 0
    assert [(m["location"], m["quantize"]) for m in snap["loaded"]] == [
        (str(tokenizer_dir), False),
        (str(tokenizer_dir), True),
    ]  # 2 x 0.4 of the GPU fit side by side


def test_a_second_base_that_does_not_fit_unloads_the_first(engines, fake_vllm, tokenizer_dir: Path) -> None:
    engine = engines()  # 0.85 of the GPU each
    run(engine, request(tokenizer_dir))
    run(engine, request(tokenizer_dir, quantize=True))
    first, second = fake_vllm.instances
    assert first.shut_down and not second.shut_down
    snap = engine.snapshot()
    assert (snap["model_loads"], snap["model_unloads"]) == (2, 1)
    assert [m["quantize"] for m in snap["loaded"]] == [True]


def test_load_failure(engines, fake_vllm, tokenizer_dir: Path) -> None:
    fake_vllm.fail_load = RuntimeError("no CUDA GPU")
    engine = engines()
    [error] = run(engine, request(tokenizer_dir))
    assert error["type"] == "error" and (error["status"], error["code"]) == (500, "model_load_failed")
    assert "no CUDA GPU" in error["message"]
    snap = engine.snapshot()
    assert (snap["model_loads"], snap["failed"], snap["loaded"]) == (0, 1, [])


def test_idle_base_is_unloaded(engines, fake_vllm, tokenizer_dir: Path) -> None:
    engine = engines(idle_seconds=0.3)
    run(engine, request(tokenizer_dir))
    assert engine.snapshot()["loaded"] and not engine.idle()
    wait_for(lambda: not engine.snapshot()["loaded"])
    assert fake_vllm.instances[0].shut_down
    assert engine.snapshot()["model_unloads"] == 1
    wait_for(engine.idle)


# ---- events ------------------------------------------------------------------------------------------------


def test_completion_events(engines, fake_vllm, tokenizer, tokenizer_dir: Path) -> None:
    engine = engines()
    prompts = ["the cat says", "a dog"]
    events = run(
        engine,
        request(tokenizer_dir, prompts=prompts, logprobs=2, sampling={"n": 2, "seed": 7, "stop": ["."]}),
    )
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    generated = len(fake_vllm.tokens) - 1  # the EOS ends each choice uncounted
    answer = tokenizer.decode(fake_vllm.tokens, skip_special_tokens=True)
    assert events[0] == {
        "type": "start",
        "prompt_tokens": sum(map(len, ids)),
        "queued_seconds": events[0]["queued_seconds"],
        "load_seconds": events[0]["load_seconds"],
        "switched": False,
    }
    assert events[-1] == {
        "type": "done",
        "usage": {"prompt_tokens": sum(map(len, ids)), "completion_tokens": 4 * generated},
    }
    assert texts(events) == {i: answer for i in range(4)}  # choice index = prompt * n + j
    for i in range(4):
        assert [(e["reason"], e["completion_tokens"]) for e in of(events, "finish") if e["index"] == i] == [
            ("stop", generated)
        ]
        entries = [x for e in of(events, "delta") if e["index"] == i for x in e["logprobs"]]
        assert [x["token"] for x in entries] == [tokenizer.decode([t]) for t in fake_vllm.tokens[:-1]]
        assert entries[0]["logprob"] == -0.5
        assert entries[0]["top"] == [
            [tokenizer.decode([t]), v] for t, v in ((fake_vllm.tokens[0], -0.5), (10, -1.5))
        ]
    # Each finish comes after its choice's last delta.
    for f in of(events, "finish"):
        assert all(events.index(d) < events.index(f) for d in of(events, "delta") if d["index"] == f["index"])
    [vllm] = fake_vllm.instances
    assert [r.prompt["prompt_token_ids"] for r in vllm.requests] == ids
    params = vllm.requests[0].params
    assert params.__dict__ == {
        "n": 2,
        "temperature": 0.0,
        "top_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": 7,
        "stop": ["."],
        "max_tokens": 128 - len(ids[0]),  # max_tokens null: the rest of the context
        "logprobs": 2,
        "prompt_logprobs": None,
        "output_kind": RequestOutputKind.DELTA,
    }
    assert vllm.requests[0].lora is None and len({r.id for r in vllm.requests}) == 2
    assert vllm.aborted == []
    snap = engine.snapshot()
    assert (snap["requests"], snap["prompt_tokens"], snap["completion_tokens"]) == (
        1,
        sum(map(len, ids)),
        4 * generated,
    )


def test_without_logprobs_deltas_carry_none(engines, fake_vllm, tokenizer_dir: Path) -> None:
    events = run(engines(), request(tokenizer_dir))
    assert of(events, "delta") and all(e["logprobs"] is None for e in of(events, "delta"))
    assert fake_vllm.instances[0].requests[0].params.logprobs is None


def test_length_and_stop_string_finishes(engines, fake_vllm, tokenizer_dir: Path) -> None:
    engine = engines()
    events = run(engine, request(tokenizer_dir, max_tokens=2))
    assert [(e["reason"], e["completion_tokens"]) for e in of(events, "finish")] == [("length", 2)]
    assert fake_vllm.instances[0].requests[-1].params.max_tokens == 2
    # A stop string (stop_reason the string): its last token counts, as in the transformers engine.
    fake_vllm.finish = ("stop", "\n")
    fake_vllm.tokens = fake_vllm.tokens[:-1]
    events = run(engine, request(tokenizer_dir, sampling={"stop": ["\n"]}))
    assert [(e["reason"], e["completion_tokens"]) for e in of(events, "finish")] == [
        ("stop", len(fake_vllm.tokens))
    ]


def test_echo_scores_the_prompt(engines, fake_vllm, tokenizer, tokenizer_dir: Path) -> None:
    engine = engines()
    prompt = "the cat says"
    ids = tokenizer(prompt)["input_ids"]
    events = run(engine, request(tokenizer_dir, prompts=[prompt], echo=True, logprobs=1, max_tokens=0))
    assert [e["type"] for e in events] == ["start", "echo", "finish", "done"]
    echo = events[1]
    assert echo["text"] == tokenizer.decode(ids, skip_special_tokens=True)
    assert echo["logprobs"][0] == {"token": tokenizer.decode([ids[0]]), "logprob": None, "top": []}
    assert echo["logprobs"][1:] == [
        {"token": tokenizer.decode([t]), "logprob": -1.0, "top": [[tokenizer.decode([10]), -0.25]]}
        for t in ids[1:]
    ]
    assert events[2] == {"type": "finish", "index": 0, "reason": "length", "completion_tokens": 0}
    assert events[3]["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0}
    params = fake_vllm.instances[0].requests[0].params
    assert (params.max_tokens, params.prompt_logprobs, params.logprobs) == (1, 1, 1)  # one token, dropped


def test_echo_without_logprobs(engines, fake_vllm, tokenizer, tokenizer_dir: Path) -> None:
    events = run(engines(), request(tokenizer_dir, echo=True, sampling={"n": 2}))
    echoes = of(events, "echo")
    assert [(e["index"], e["logprobs"]) for e in echoes] == [(0, None), (1, None)]
    answer = tokenizer.decode(fake_vllm.tokens, skip_special_tokens=True)
    prompt = tokenizer.decode(tokenizer("the cat says")["input_ids"], skip_special_tokens=True)
    assert texts(events) == {0: prompt + answer, 1: prompt + answer}
    assert events.index(echoes[0]) < min(events.index(d) for d in of(events, "delta"))
    assert fake_vllm.instances[0].requests[0].params.prompt_logprobs is None


# ---- errors ------------------------------------------------------------------------------------------------


def test_context_errors_as_the_transformers_engine(engines, fake_vllm, tokenizer_dir: Path) -> None:
    fake_vllm.max_model_len = 8
    engine = engines()
    long = " ".join(["the cat says moo"] * 4)
    [error] = run(engine, request(tokenizer_dir, prompts=[long]))
    assert (error["status"], error["code"], error["param"]) == (400, "context_length_exceeded", "prompt")
    assert "this model's context is 8 tokens" in error["message"]
    [error] = run(engine, request(tokenizer_dir, prompts=["the cat"], max_tokens=50))
    assert (error["status"], error["code"], error["param"]) == (400, "context_length_exceeded", "max_tokens")
    [error] = run(engine, request(tokenizer_dir, prompts=[""]))
    assert (error["code"], error["param"]) == ("invalid_request", "prompt")
    error = run(
        engine,
        request(tokenizer_dir, kind="chat", prompts=None, messages=[{"role": "user", "content": long}]),
    )[-1]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert engine.snapshot()["failed"] == 4


def test_vllm_refusing_a_request_is_a_400(engines, fake_vllm, tokenizer_dir: Path) -> None:
    fake_vllm.fail_generate = ValueError(
        "Requested sample logprobs of 50, which is greater than max allowed: 20"
    )
    events = run(engines(), request(tokenizer_dir, logprobs=50))
    assert events[0]["type"] == "start"
    error = events[-1]
    assert (error["type"], error["status"], error["code"]) == ("error", 400, "invalid_request")
    assert "max allowed: 20" in error["message"]


def test_an_unexpected_finish_is_a_500(engines, fake_vllm, tokenizer_dir: Path) -> None:
    fake_vllm.finish = ("abort", None)
    error = run(engines(), request(tokenizer_dir))[-1]
    assert (error["type"], error["status"], error["code"]) == ("error", 500, "generation_failed")


def test_missing_adapter_is_404(engines, fake_vllm, tokenizer_dir: Path, tmp_path: Path) -> None:
    [error] = run(
        engines(), request(tokenizer_dir, adapter={"name": "ft-gone", "path": str(tmp_path / "gone")})
    )
    assert (error["status"], error["code"]) == (404, "model_not_found")


# ---- cancellation ------------------------------------------------------------------------------------------


def test_cancel_aborts_the_vllm_request(engines, fake_vllm, tokenizer_dir: Path) -> None:
    fake_vllm.tokens = fake_vllm.tokens[:1] * 40 + fake_vllm.tokens[-1:]
    fake_vllm.delay = 0.02
    engine = engines()
    events = run(engine, request(tokenizer_dir, prompts=["the cat", "a dog"]), cancel_after=1)
    [vllm] = fake_vllm.instances
    wait_for(lambda: len(vllm.aborted) == 2)
    assert sorted(vllm.aborted) == sorted(r.id for r in vllm.requests)
    time.sleep(0.1)
    assert not of(events, "done") and len(of(events, "delta")) < 40
    snap = engine.snapshot()
    assert (snap["cancelled"], snap["failed"], snap["busy"], snap["queued"]) == (1, 0, False, 0)
    # What it made before the cancel still counts (as in the transformers engine).
    assert snap["prompt_tokens"] == sum(len(r.prompt["prompt_token_ids"]) for r in vllm.requests)
    assert 0 < snap["completion_tokens"] < 40  # of the 80 asked for


def test_a_request_cancelled_before_it_runs(engines, fake_vllm, tokenizer_dir: Path) -> None:
    engine = engines()
    gen = Generation.from_request(request(tokenizer_dir), lambda e: pytest.fail(f"an event: {e}"))
    gen.cancelled.set()
    engine.submit(gen)
    wait_for(lambda: engine.snapshot()["cancelled"] == 1)
    assert fake_vllm.instances == []


# ---- adapters ----------------------------------------------------------------------------------------------


def test_chat_with_an_adapter(engines, fake_vllm, tokenizer, tokenizer_dir: Path, tmp_path: Path) -> None:
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' says: ' + m['content'] + '<|im_end|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    adapter = make_adapter(tmp_path, "ft-abc", tokenizer_dir, template=template)
    messages = [{"role": "user", "content": "What sound does a cow make?"}]
    engine = engines()
    events = run(
        engine, request(tokenizer_dir, kind="chat", prompts=None, messages=messages, adapter=adapter)
    )
    assert events[0]["switched"] is True and of(events, "done")
    [vllm] = fake_vllm.instances
    text = "<|im_start|>user says: What sound does a cow make?<|im_end|><|im_start|>assistant\n"
    assert (
        vllm.requests[0].prompt["prompt_token_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    lora = FakeLoRARequest(lora_name="ft-abc", lora_int_id=1, lora_path=adapter["path"])
    assert vllm.requests[0].lora == lora and vllm.added == [lora]
    # The bare base uses its own template.
    run(engine, request(tokenizer_dir, kind="chat", prompts=None, messages=messages))
    base_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (
        vllm.requests[1].prompt["prompt_token_ids"]
        == tokenizer(base_text, add_special_tokens=False)["input_ids"]
    )
    assert vllm.requests[1].lora is None


def test_adapter_loads_and_switches(engines, fake_vllm, tokenizer_dir: Path, tmp_path: Path) -> None:
    a = make_adapter(tmp_path, "ft-a", tokenizer_dir)
    b = make_adapter(tmp_path, "ft-b", tokenizer_dir, r=16)
    engine = engines()
    switched = [
        run(engine, request(tokenizer_dir, adapter=x))[0]["switched"] for x in (None, a, a, b, None, a)
    ]
    assert switched == [False, True, False, True, True, True]
    snap = engine.snapshot()
    assert (snap["adapter_loads"], snap["adapter_switches"], snap["adapter_evictions"]) == (2, 3, 0)
    assert snap["loaded"][0]["adapters"] == ["ft-b", "ft-a"]
    [vllm] = fake_vllm.instances
    assert [(r.lora_name, r.lora_int_id) for r in vllm.added] == [("ft-a", 1), ("ft-b", 2)]
    assert [r.lora.lora_int_id if r.lora else None for r in vllm.requests] == [None, 1, 1, 2, None, 1]


def test_adapter_lru(engines, fake_vllm, tokenizer_dir: Path, tmp_path: Path) -> None:
    adapters = [make_adapter(tmp_path, f"ft-{i}", tokenizer_dir) for i in range(3)]
    engine = engines(max_adapters=2)
    for a in adapters:
        run(engine, request(tokenizer_dir, adapter=a))
    snap = engine.snapshot()
    assert snap["loaded"][0]["adapters"] == ["ft-1", "ft-2"] and snap["adapter_evictions"] == 1
    assert fake_vllm.instances[0].removed == [1]


def test_evict(engines, fake_vllm, tokenizer_dir: Path, tmp_path: Path) -> None:
    a = make_adapter(tmp_path, "ft-a", tokenizer_dir)
    engine = engines()
    run(engine, request(tokenizer_dir, adapter=a))
    assert engine.evict("ft-a") is True
    assert engine.evict("ft-unknown") is False
    [vllm] = fake_vllm.instances
    assert vllm.removed == [1]
    snap = engine.snapshot()
    assert snap["loaded"][0]["adapters"] == [] and snap["adapter_evictions"] == 1
    # Used again (say the same name came back): loaded again.
    run(engine, request(tokenizer_dir, adapter=a))
    assert engine.snapshot()["adapter_loads"] == 2 and len(vllm.added) == 2


def test_evict_while_in_use_waits_for_the_request(
    engines, fake_vllm, tokenizer_dir: Path, tmp_path: Path
) -> None:
    a = make_adapter(tmp_path, "ft-a", tokenizer_dir)
    fake_vllm.delay = 0.05
    engine = engines()
    done = threading.Event()
    gen = Generation.from_request(
        request(tokenizer_dir, adapter=a), lambda e: done.set() if e["type"] in ("done", "error") else None
    )
    engine.submit(gen)
    wait_for(lambda: engine.snapshot()["busy"] and fake_vllm.instances and fake_vllm.instances[0].requests)
    assert engine.evict("ft-a") is True
    [vllm] = fake_vllm.instances
    assert vllm.removed == []  # still generating with it
    assert done.wait(10)
    wait_for(lambda: vllm.removed == [1])


def test_a_larger_adapter_rank_restarts_the_engine(
    engines, fake_vllm, tokenizer_dir: Path, tmp_path: Path
) -> None:
    small = make_adapter(tmp_path, "ft-small", tokenizer_dir, r=8)
    large = make_adapter(tmp_path, "ft-large", tokenizer_dir, r=100)
    huge = make_adapter(tmp_path, "ft-huge", tokenizer_dir, r=1024)
    engine = engines()
    run(engine, request(tokenizer_dir, adapter=small))
    assert of(run(engine, request(tokenizer_dir, adapter=large)), "done")
    first, second = fake_vllm.instances
    assert (first.args.max_lora_rank, second.args.max_lora_rank) == (64, 128)
    assert first.shut_down and not second.shut_down
    snap = engine.snapshot()
    assert (snap["model_loads"], snap["model_unloads"]) == (2, 1)
    [error] = run(engine, request(tokenizer_dir, adapter=huge))
    assert (error["status"], error["code"]) == (500, "model_load_failed") and "1024" in error["message"]


def test_first_adapter_rank_sets_the_engine_rank(
    engines, fake_vllm, tokenizer_dir: Path, tmp_path: Path
) -> None:
    big = make_adapter(tmp_path, "ft-big", tokenizer_dir, r=200)
    run(engines(), request(tokenizer_dir, adapter=big))
    assert fake_vllm.instances[0].args.max_lora_rank == 256


# ---- on a GPU, with vLLM: the real worker ------------------------------------------------------------------


def _vllm_on_gpu() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _ask(path: Path, req: dict[str, Any], timeout: float = 600.0) -> list[dict[str, Any]]:
    events = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall((json.dumps(req) + "\n").encode())
        with s.makefile("rb") as f:
            for raw in f:
                events.append(json.loads(raw))
                if events[-1]["type"] in ("done", "error", "stats", "evicted"):
                    break
    return events


def _lora_adapter(base_dir: Path, out: Path) -> Path:
    """A random (non-zero) LoRA adapter on the tiny model, saved with its tokenizer as the trainer does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(8.0)  # large enough to change greedy answers
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


@pytest.mark.gpu
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not _vllm_on_gpu(), reason="needs vLLM and a CUDA GPU")
def test_real_worker_on_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tuning_trainer.serve.engine import TransformersEngine

    adapter = _lora_adapter(tiny_model_dir, tmp_path / "adapter")
    messages = [{"role": "user", "content": "What sound does a cow make?"}]

    def req(adapter_path: Path | None) -> dict[str, Any]:
        return {
            "op": "generate",
            "base": {"location": str(tiny_model_dir), "quantize": False},
            "adapter": None if adapter_path is None else {"name": "ft-gpu", "path": str(adapter_path)},
            "kind": "chat",
            "messages": messages,
            "max_tokens": 8,
            "echo": False,
            "logprobs": None,
            "sampling": {"temperature": 0.0},
        }

    # The reference: the transformers engine's greedy answers, in this process.
    reference = TransformersEngine(max_adapters=2, idle_seconds=3600)
    expected = {}
    for key, path in (("base", None), ("adapter", adapter)):
        got = threading.Event()
        events: list[dict[str, Any]] = []

        def emit(e: dict[str, Any], events=events, got=got) -> None:
            events.append(e)
            if e["type"] in ("done", "error"):
                got.set()

        reference.submit(Generation.from_request(req(path), emit))
        assert got.wait(300), events
        assert events[-1]["type"] == "done", events
        expected[key] = texts(events)[0]

    sock = Path(f"/tmp/tuning-vllm-test-{os.getpid()}.sock")  # a Unix socket path must be short
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "TUNING_INFERENCE_GPU_MEMORY": "0.3",  # the reference engine above holds some of the GPU too
        "PYTHONUNBUFFERED": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    cmd = [sys.executable, "-m", "tuning_trainer.serve", "--engine", "vllm", "--socket", str(sock)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: sock.exists() or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)

        def first_tokens(text: str, k: int = 3) -> list[int]:
            return tok(text, add_special_tokens=False)["input_ids"][:k]

        for key, path in (("base", None), ("adapter", adapter)):
            events = _ask(sock, req(path))
            assert events[-1]["type"] == "done", (events, log_path.read_text()[-3000:])
            assert events[0]["type"] == "start" and events[0]["switched"] is (path is not None)
            text = texts(events).get(0, "")
            assert text, events
            # Greedy decoding in bf16 on two different kernels: the first few tokens agree.
            assert first_tokens(text) == first_tokens(expected[key]), (key, text, expected[key])
            [finish] = of(events, "finish")
            assert finish["reason"] in ("stop", "length")
            assert events[-1]["usage"]["completion_tokens"] == finish["completion_tokens"] <= 8
        [stats] = _ask(sock, {"op": "stats"})
        assert stats["engine"] == "vllm" and stats["adapter_loads"] == 1 and stats["model_loads"] == 1
        assert _ask(sock, {"op": "evict", "adapter": "ft-gpu"}) == [{"type": "evicted", "found": True}]
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if sock.exists():
            sock.unlink()

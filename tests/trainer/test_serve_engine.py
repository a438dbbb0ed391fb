"""The transformers inference engine against references: greedy decoding equals transformers' `generate`,
log probabilities equal a plain forward pass's, an adapter's answers equal a freshly loaded PeftModel's, and
the bare base is really bare while adapters are loaded. Also sampling (seed, n), stop sequences, context
limits, cancellation, the adapter LRU and eviction. In process, on the tiny model."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import peft  # noqa: F401  (imported before any engine thread imports it: lazy modules and threads race)
import pytest
import torch
import transformers  # noqa: F401

from tuning_trainer.serve.engine import TransformersEngine
from tuning_trainer.serve.protocol import Generation

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "What sound does a cow make?"}]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved with the tokenizer as the trainer saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(8.0)  # large enough to change greedy answers
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return _make_adapter(tiny_model_dir, root / "a", 1), _make_adapter(tiny_model_dir, root / "b", 2)


@pytest.fixture(scope="module")
def engine() -> TransformersEngine:
    return TransformersEngine(max_adapters=8, idle_seconds=3600)


def run(engine: TransformersEngine, req: dict[str, Any], *, cancel_after: int | None = None) -> list[dict]:
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
    assert finished.wait(120), events
    if cancel_after is not None:
        # The engine notices the cancel between tokens: wait until it is idle again.
        engine.snapshot()
        for _ in range(200):
            if not engine.snapshot()["busy"] and engine.snapshot()["queued"] == 0:
                break
            threading.Event().wait(0.01)
    return events


def request(base: Path, **kw: Any) -> dict[str, Any]:
    sampling = {"temperature": 0.0, "n": 1, "stop": [], **kw.pop("sampling", {})}
    req = {
        "base": {"location": str(base), "quantize": False},
        "adapter": None,
        "kind": "chat",
        "messages": MESSAGES,
        "max_tokens": 12,
        "echo": False,
        "logprobs": None,
        "sampling": sampling,
    }
    req.update(kw)
    return req


def texts(events: list[dict[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in events:
        if e["type"] in ("delta", "echo"):
            out[e["index"]] = out.get(e["index"], "") + e["text"]
    return out


def finishes(events: list[dict[str, Any]]) -> dict[int, str]:
    return {e["index"]: e["reason"] for e in events if e["type"] == "finish"}


def token_logprobs(events: list[dict[str, Any]], index: int = 0) -> list[dict[str, Any]]:
    return [lp for e in events if e["type"] == "delta" and e["index"] == index for lp in e["logprobs"] or []]


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]] = MESSAGES) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def hf_greedy(model: Any, ids: list[int], new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=new, do_sample=False, attention_mask=torch.ones(1, len(ids))
        )
    return list(out[0, len(ids) :].tolist())


def test_greedy_decoding_equals_transformers_generate(engine, tiny, tiny_model_dir):
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer)
    events = run(engine, request(tiny_model_dir, max_tokens=16, logprobs=0))
    start = events[0]
    assert start["type"] == "start" and start["prompt_tokens"] == len(ids)
    ours = [
        tokenizer.convert_tokens_to_ids(tokenizer.tokenize(lp["token"]))[0] for lp in token_logprobs(events)
    ]
    reference = hf_greedy(model, ids, 16)
    eos = set(
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id]
    )
    reference = reference[: next((i for i, t in enumerate(reference) if t in eos), len(reference))]
    assert texts(events)[0] == tokenizer.decode(reference, skip_special_tokens=True)
    assert len(ours) == len(reference)
    usage = events[-1]["usage"]
    assert usage == {"prompt_tokens": len(ids), "completion_tokens": len(reference)}


def test_logprobs_equal_a_plain_forward_pass(engine, tiny, tiny_model_dir):
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer)
    events = run(engine, request(tiny_model_dir, max_tokens=6, logprobs=3))
    entries = token_logprobs(events)
    generated = hf_greedy(model, ids, len(entries))
    with torch.no_grad():
        logits = model(torch.tensor([ids + generated])).logits[0].float()
    reference = torch.log_softmax(logits, dim=-1)
    assert "".join(e["token"] for e in entries) == texts(events)[0]
    for i, entry in enumerate(entries):
        row = reference[len(ids) - 1 + i]
        assert entry["logprob"] == pytest.approx(float(row[generated[i]]), abs=1e-4)
        top = row.topk(3)
        assert [t for t, _ in entry["top"]] == [tokenizer.decode([int(t)]) for t in top.indices]
        assert [lp for _, lp in entry["top"]] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_echo_scores_the_prompt_like_a_forward_pass(engine, tiny, tiny_model_dir):
    model, tokenizer = tiny
    # A chat-rendered prompt: its template markers are special tokens, written in the prompt itself.
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) + "The cow"
    events = run(
        engine,
        request(
            tiny_model_dir,
            kind="completion",
            messages=None,
            prompts=[prompt],
            max_tokens=0,
            echo=True,
            logprobs=1,
        ),
    )
    echo = next(e for e in events if e["type"] == "echo")
    ids = list(tokenizer(prompt)["input_ids"])
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    assert echo["text"] == prompt
    assert echo["logprobs"][0]["logprob"] is None
    # Each token as it reads in the text: they join up to it (so text offsets add up).
    assert "".join(e["token"] for e in echo["logprobs"]) == echo["text"]
    got = [e["logprob"] for e in echo["logprobs"][1:]]
    assert got == pytest.approx([float(reference[i, ids[i + 1]]) for i in range(len(ids) - 1)], abs=1e-4)
    assert finishes(events) == {0: "length"} and events[-1]["usage"]["completion_tokens"] == 0


def test_sampling_is_reproducible_by_seed_and_n_gives_independent_choices(engine, tiny_model_dir):
    sampled = {"temperature": 1.5, "n": 3, "seed": 7}
    a = texts(run(engine, request(tiny_model_dir, max_tokens=20, sampling=sampled)))
    b = texts(run(engine, request(tiny_model_dir, max_tokens=20, sampling=sampled)))
    c = texts(run(engine, request(tiny_model_dir, max_tokens=20, sampling={**sampled, "seed": 8})))
    assert a == b and sorted(a) == [0, 1, 2]
    assert len(set(a.values())) > 1  # three samples, not one repeated
    assert a != c
    # A nucleus this small keeps only the most likely token: greedy.
    nucleus = texts(
        run(engine, request(tiny_model_dir, max_tokens=20, sampling={"temperature": 1.0, "top_p": 1e-6}))
    )
    greedy = texts(run(engine, request(tiny_model_dir, max_tokens=20)))
    assert nucleus == greedy


def test_stop_sequences_end_the_text_before_them_and_stream_joins_up(engine, tiny_model_dir):
    full = texts(run(engine, request(tiny_model_dir, max_tokens=24)))[0]
    assert len(full) > 6, full
    stop = full[3:5]
    events = run(engine, request(tiny_model_dir, max_tokens=24, sampling={"stop": [stop, "never-seen"]}))
    assert texts(events)[0] == full[: full.index(stop)]
    assert finishes(events) == {0: "stop"}


def test_a_prompt_over_the_context_and_max_tokens_over_it_are_errors_naming_the_field(engine, tiny_model_dir):
    long_prompt = "moo " * 2000
    err = run(engine, request(tiny_model_dir, kind="completion", messages=None, prompts=[long_prompt]))[-1]
    assert (err["type"], err["status"], err["code"], err["param"]) == (
        "error",
        400,
        "context_length_exceeded",
        "prompt",
    )
    err = run(engine, request(tiny_model_dir, messages=[{"role": "user", "content": long_prompt}]))[-1]
    assert (err["code"], err["param"]) == ("context_length_exceeded", "messages")
    err = run(engine, request(tiny_model_dir, max_tokens=100_000))[-1]
    assert (err["code"], err["param"]) == ("context_length_exceeded", "max_tokens")
    assert "512" in err["message"]


def test_a_cancelled_generation_stops_between_tokens(engine, tiny_model_dir):
    before = engine.snapshot()["cancelled"]
    events = run(
        engine,
        request(tiny_model_dir, max_tokens=400, sampling={"temperature": 1.0, "seed": 1}),
        cancel_after=2,
    )
    assert not any(e["type"] == "done" for e in events)
    assert engine.snapshot()["cancelled"] == before + 1


def test_adapters_match_a_fresh_peft_model_and_the_base_stays_bare(engine, tiny, tiny_model_dir, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, tokenizer = tiny
    a, b = adapters
    ids = prompt_ids(tokenizer)
    spec = {"a": {"name": "job-a", "path": str(a)}, "b": {"name": "job-b", "path": str(b)}}
    base_text = texts(run(engine, request(tiny_model_dir, max_tokens=12)))[0]
    switches = engine.snapshot()["adapter_switches"]
    got = {k: texts(run(engine, request(tiny_model_dir, adapter=spec[k], max_tokens=12)))[0] for k in "ab"}
    for k, path in (("a", a), ("b", b)):
        fresh = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), path).eval()
        assert got[k] == tokenizer.decode(hf_greedy(fresh, ids, 12), skip_special_tokens=True), k
    assert got["a"] != got["b"] != base_text
    # Alternating keeps each answer; each change of adapter is a switch; the base is unchanged by them.
    for k in "abab":
        assert texts(run(engine, request(tiny_model_dir, adapter=spec[k], max_tokens=12)))[0] == got[k]
    assert texts(run(engine, request(tiny_model_dir, max_tokens=12)))[0] == base_text
    assert engine.snapshot()["adapter_switches"] - switches == 6
    assert engine.evict("job-a") is True and engine.evict("job-a") is False
    assert engine.snapshot()["loaded"][0]["adapters"] == ["job-b"]


def test_the_least_recently_used_adapter_makes_room(tiny_model_dir, adapters):
    small = TransformersEngine(max_adapters=1, idle_seconds=3600)
    a, b = adapters
    for name, path in (("job-a", a), ("job-b", b), ("job-a", a)):
        events = run(small, request(tiny_model_dir, adapter={"name": name, "path": str(path)}, max_tokens=2))
        assert events[-1]["type"] == "done", events
    snap = small.snapshot()
    assert snap["adapter_loads"] == 3 and snap["adapter_evictions"] == 2
    assert snap["loaded"][0]["adapters"] == ["job-a"]


def test_an_adapter_gone_from_disk_is_model_not_found(engine, tiny_model_dir, tmp_path):
    err = run(engine, request(tiny_model_dir, adapter={"name": "gone", "path": str(tmp_path / "nope")}))[-1]
    assert (err["status"], err["code"]) == (404, "model_not_found")


def test_a_model_unused_for_the_idle_time_is_unloaded_and_then_the_engine_is_idle(tiny_model_dir):
    quick = TransformersEngine(max_adapters=2, idle_seconds=0.5)
    assert run(quick, request(tiny_model_dir, max_tokens=2))[-1]["type"] == "done"
    assert quick.snapshot()["loaded"]
    for _ in range(100):
        if quick.idle():
            break
        threading.Event().wait(0.1)
    snap = quick.snapshot()
    assert quick.idle() and snap["loaded"] == [] and snap["model_unloads"] == 1


def test_a_failure_on_the_engine_thread_does_not_end_it(tiny_model_dir, monkeypatch):
    engine = TransformersEngine(max_adapters=2, idle_seconds=3600)

    def broken(name: str) -> bool:
        raise RuntimeError("peft refused")

    monkeypatch.setattr(engine, "_evict", broken)
    assert engine.evict("job-x") is False  # answered, not hung
    assert run(engine, request(tiny_model_dir, max_tokens=2))[-1]["type"] == "done"

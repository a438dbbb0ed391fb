"""Packed batches are exact, against references: each example's logits in a shared row equal its logits run
alone (every attention kernel this CPU has); TokenLoss's loss, accuracy and LoRA gradients equal HF's own loss
on the same examples padded; the chunked head equals the unchunked one; nothing of the base is upcast."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tuning_trainer import memory, objective
from tuning_trainer.batching import IGNORE_INDEX, lay_out
from tuning_trainer.config import Hyperparameters, JobConfig
from tuning_trainer.modelling import ModelSource, load_model
from tuning_trainer.runplan import layout_for

torch = pytest.importorskip("torch")

# Lengths that make both layouts share rows: varlen one row of 50; rows of width 17 hold 17, 13+4, 9+7.
LENGTHS = (13, 7, 17, 4, 9)
BACKENDS = ["eager", "sdpa", "flex_attention"]


def _examples(vocab: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        # A prompt of a third of the example carries no loss, as with assistant-only training.
        labels = [IGNORE_INDEX] * (n // 3) + ids[n // 3 :]
        out.append({"input_ids": ids, "labels": labels})
    return out


def _model(tiny_model_dir: Path, attn: str = "sdpa", **hp: Any) -> Any:
    cfg = JobConfig(
        model=str(tiny_model_dir),
        training_file="-",
        output_dir="-",
        method="lora",
        hyperparameters=Hyperparameters(**hp),
    )
    torch.manual_seed(0)
    model, _ = load_model(
        cfg, ModelSource("local", str(tiny_model_dir)), torch.device("cpu"), attn_implementation=attn
    )
    # LoRA's B starts at zero (the adapter a no-op); make it matter, so that its gradients mean something.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("layout", ["varlen", "rows"])
def test_each_example_in_a_packed_row_has_its_own_logits(
    tiny_model_dir: Path, attn: str, layout: str
) -> None:
    if attn == "flex_attention":
        # transformers compiles flex attention; a compile for a second shape goes dynamic, and torch 2.13's
        # CPU code generation for dynamic flex attention fails (C++ errors). So flex runs one shape per case
        # (the packed batch) from a fresh cache; the examples alone run on sdpa (same weights).
        torch._dynamo.reset()
    model = _model(tiny_model_dir, attn).eval()
    alone_model = _model(tiny_model_dir, "sdpa").eval() if attn == "flex_attention" else model
    examples = _examples(model.config.vocab_size)
    laid = lay_out(examples, layout, pad_token_id=0)  # type: ignore[arg-type]
    assert len(laid.input_ids) < len(examples)  # examples really share rows
    with torch.no_grad():
        packed = model(
            input_ids=torch.tensor(laid.input_ids),
            position_ids=torch.tensor(laid.position_ids),
            use_cache=False,
        ).logits
        # Find each example in the rows by its position ids restarting at 0, then compare with it run alone.
        found = 0
        for row, positions in enumerate(laid.position_ids):
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
            for a, b in itertools.pairwise(starts):
                ids = laid.input_ids[row][a:b]
                match = [ex for ex in examples if ex["input_ids"] == ids]
                if not match:
                    continue  # the padding segment
                alone = alone_model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[row, a:b], alone, atol=2e-5, rtol=1e-4)
                found += 1
    assert found == len(examples)


def test_without_the_position_reset_examples_would_attend_to_each_other(tiny_model_dir: Path) -> None:
    """The reference check has teeth: the same row with ordinary positions gives other logits."""
    model = _model(tiny_model_dir).eval()
    laid = lay_out(_examples(model.config.vocab_size), "varlen", pad_token_id=0)
    ids = torch.tensor(laid.input_ids)
    with torch.no_grad():
        reset = model(input_ids=ids, position_ids=torch.tensor(laid.position_ids), use_cache=False).logits
        plain = model(input_ids=ids, use_cache=False).logits
    first = LENGTHS[0]
    torch.testing.assert_close(reset[0, :first], plain[0, :first])  # the first example is alone either way
    assert (reset[0, first:] - plain[0, first:]).abs().max() > 1e-2


def _reference(model: Any, examples: list[dict[str, list[int]]]) -> tuple[Any, float, dict[str, Any]]:
    """HF's own loss on the examples right-padded into one batch, its token accuracy and LoRA gradients."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n], mask[r, :n], labels[r, :n] = torch.tensor(e["input_ids"]), 1, torch.tensor(e["labels"])
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    accuracy = float((out.logits[:, :-1].argmax(-1)[keep] == shifted[keep]).float().mean())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), accuracy, grads


def _ours(model: Any, examples: list[dict[str, list[int]]], layout: str) -> tuple[Any, float, dict[str, Any]]:
    loss_fn = objective.TokenLoss(model)
    laid = lay_out(examples, layout, pad_token_id=0)  # type: ignore[arg-type]
    model.zero_grad()
    loss_sum, correct = loss_fn(**objective.batch_tensors(laid, torch.device("cpu")))
    (loss_sum / laid.trained).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (loss_sum / laid.trained).detach(), float(correct) / laid.trained, grads


@pytest.mark.parametrize("layout", ["varlen", "rows"])
def test_token_loss_equals_hf_loss_accuracy_and_gradients(tiny_model_dir: Path, layout: str) -> None:
    model = _model(tiny_model_dir)
    examples = _examples(model.config.vocab_size)
    ref_loss, ref_acc, ref_grads = _reference(model, examples)
    loss, acc, grads = _ours(model, examples, layout)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert acc == pytest.approx(ref_acc)
    assert ref_grads.keys() == grads.keys() and len(grads) > 0
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_chunked_head_equals_one_chunk(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(tiny_model_dir)
    examples = _examples(model.config.vocab_size)
    whole_loss, whole_acc, whole_grads = _ours(model, examples, "varlen")
    # Chunks of 3 tokens: many chunks, each under activation checkpointing.
    monkeypatch.setattr(objective, "CHUNK_BYTES", 3 * 4 * model.config.vocab_size)
    loss, acc, grads = _ours(model, examples, "varlen")
    torch.testing.assert_close(loss, whole_loss, atol=1e-6, rtol=1e-6)
    assert acc == whole_acc
    for name, g in whole_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_the_fused_frozen_head_equals_the_checkpointed_chunks(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frozen-head path (gradient in the forward pass) against the general one (each chunk recomputed
    under activation checkpointing, for a head that is trained, quantized or soft-capped)."""
    model = _model(tiny_model_dir)
    examples = _examples(model.config.vocab_size)
    monkeypatch.setattr(objective, "CHUNK_BYTES", 5 * 4 * model.config.vocab_size)
    calls: list[int] = []
    fused = objective._FrozenHeadLoss.apply
    monkeypatch.setattr(objective._FrozenHeadLoss, "apply", lambda *a: calls.append(1) or fused(*a))
    loss, acc, grads = _ours(model, examples, "rows")
    assert calls, "the frozen output head did not take the fused path"
    monkeypatch.setattr(objective, "_frozen_linear", lambda module: False)
    ref_loss, ref_acc, ref_grads = _ours(model, examples, "rows")
    assert len(calls) == 1
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    assert acc == ref_acc
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_memory_estimate_uses_the_objectives_chunk() -> None:
    assert memory.CHUNK_BYTES == objective.CHUNK_BYTES


def test_nothing_of_the_base_is_upcast(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuning_trainer import modelling

    monkeypatch.setattr(modelling, "compute_dtype", lambda device: torch.bfloat16)
    model = _model(tiny_model_dir)
    base = model.get_base_model()
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert base.get_output_embeddings().weight.dtype == torch.bfloat16
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())


def test_each_kernel_gets_its_layout() -> None:
    assert [layout_for(a) for a in ("flash_attention_2", "flex_attention", "sdpa", "eager")] == [
        "varlen",
        "varlen",
        "rows",
        "rows",
    ]

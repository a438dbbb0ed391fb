"""PreferenceLoss against TRL's own trainers, on the same batch: the tiny Llama with a LoRA adapter whose B
weights are random (so the policy is not the reference), a few pairs of different lengths, and the very token
ids and completion masks our encoding gives, handed to each TRL trainer as its collated batch.

- DPO: DPOTrainer (loss_type "sigmoid") built from the base model and a peft_config, as TRL is used for LoRA
  DPO: its reference is then the model with the adapter disabled, as ours. (A ready PeftModel would instead
  get a frozen copy of its adapter as the reference: TRL 1.x's "ref" adapter.) Loss, rewards, reward
  accuracy, chosen-token accuracy and the LoRA gradients.
- SimPO: trl.experimental's CPOTrainer, loss_type "simpo", cpo_alpha 0 (no NLL term), simpo_gamma = γ.
- ORPO: trl.experimental's ORPOTrainer. Its NLL term is a token mean over the batch's whole chosen sequences,
  prompt included (trl#1516, as the ORPO authors' code), ours the mean of each pair's answer-token mean. So
  the odds-ratio term and the rewards are compared on any pairs, and the whole loss on pairs whose prompt is
  one token (nothing of the prompt to predict) and whose chosen answers are equally long.

fp32 on the CPU; everything agrees within 1e-5.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tuning_trainer.batching import IGNORE_INDEX, lay_out
from tuning_trainer.config import Hyperparameters
from tuning_trainer.data import Pair
from tuning_trainer.dataset import encode_pair

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
pytest.importorskip("datasets")

TOL = 1e-5
PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does the cat say?"}]
MULTI_TURN = [
    {"role": "user", "content": "What does the cat say?"},
    {"role": "assistant", "content": "The cat says meow."},
    {"role": "user", "content": "And the dog?"},
]
# Prompts and answers of different lengths; text and messages; a prompt with an assistant turn of its own.
PAIRS = [
    Pair("What does the cow say? ", "moo", "woof woof"),
    Pair(PROMPT, [{"role": "assistant", "content": "The cat says meow."}], "The cat says woof, I think."),
    Pair(MULTI_TURN, "The dog says woof.", "Moo."),
    Pair("Spell the number 7.", "seven", "7 is spelled three, or maybe eight."),
    Pair([{"role": "user", "content": "What colour is the sky?"}], "The sky is blue.", "Green."),
]
Encoded = list[list[tuple[list[int], list[bool]]]]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """One torch thread while this module runs (on 2 shared cores a second one only slows it down)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from tuning_trainer.modelling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def _trainer(kind: str, tiny_model_dir: Path, tokenizer: Any, tmp_path: Path, **args: Any) -> Any:
    """A TRL trainer for `kind` on the base model with the service's LoRA adapter (its own peft_config), the
    adapter's B weights then randomised. The one-pair dataset is there because the trainers need one: the
    batches compared are built below."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from tuning_trainer.modelling import lora_config

    base = AutoModelForCausalLM.from_pretrained(
        str(tiny_model_dir), dtype=torch.float32, attn_implementation="sdpa"
    )
    common = dict(output_dir=str(tmp_path), bf16=False, report_to="none", use_cpu=True, **args)
    kwargs = dict(
        model=base,
        train_dataset=Dataset.from_list([{"prompt": "Say yes.", "chosen": " yes", "rejected": " no"}]),
        processing_class=tokenizer,
        peft_config=lora_config(Hyperparameters()),
    )
    if kind == "dpo":
        trainer = trl.DPOTrainer(args=trl.DPOConfig(**common, gradient_checkpointing=False), **kwargs)
        assert "ref" not in trainer.model.peft_config  # the reference is the adapter disabled
    elif kind == "simpo":
        cpo = pytest.importorskip("trl.experimental.cpo", reason="this trl has no CPOTrainer (SimPO)")
        trainer = cpo.CPOTrainer(args=cpo.CPOConfig(**common, gradient_checkpointing=False), **kwargs)
    else:
        orpo = pytest.importorskip("trl.experimental.orpo", reason="this trl has no ORPOTrainer")
        trainer = orpo.ORPOTrainer(args=orpo.ORPOConfig(**common, gradient_checkpointing=False), **kwargs)
    model = trainer.model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()  # no dropout; DPOTrainer then files its metrics under "eval"
    return trainer


def _encode(tokenizer: Any, pairs: list[Pair]) -> Encoded:
    return [encode_pair(pair, tokenizer) for pair in pairs]


def _ours(
    model: Any, method: str, encoded: Encoded, layout: str, pad: int, **kw: Any
) -> tuple[Any, dict[str, float]]:
    """Our mean loss over the pairs (with its graph) and the metrics our summary makes of the stats."""
    from tuning_trainer.objective import PreferenceLoss, batch_tensors, summarise

    examples = [
        {"input_ids": ids, "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]}
        for pair in encoded
        for ids, mask in pair
    ]
    inputs = batch_tensors(lay_out(examples, layout, pad), torch.device("cpu"), pairs=True)  # type: ignore[arg-type]
    loss, stats = PreferenceLoss(model, method=method, **kw)(**inputs)
    metrics = summarise(stats.tolist(), len(encoded), preference=True)
    metrics["rewards_accuracy"] = float(stats[2]) / len(encoded)  # unrounded
    return loss / len(encoded), metrics


def _pad(rows: list[list[int]], value: int) -> Any:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def _dpo_batch(encoded: Encoded, pad: int) -> dict[str, Any]:
    """DataCollatorForPreference's layout: every chosen sequence, then every rejected one, right-padded."""
    seqs = [pair[0] for pair in encoded] + [pair[1] for pair in encoded]
    return {
        "input_ids": _pad([ids for ids, _ in seqs], pad),
        "attention_mask": _pad([[1] * len(ids) for ids, _ in seqs], 0),
        "completion_mask": _pad([[int(m) for m in mask] for _, mask in seqs], 0),
    }


def _paired_batch(encoded: Encoded, pad: int) -> dict[str, Any]:
    """DPODataCollatorWithPadding's layout (CPOTrainer, ORPOTrainer): chosen_* and rejected_* tensors."""
    out = {}
    for side, name in ((0, "chosen"), (1, "rejected")):
        seqs = [pair[side] for pair in encoded]
        out[f"{name}_input_ids"] = _pad([ids for ids, _ in seqs], pad)
        out[f"{name}_attention_mask"] = _pad([[1] * len(ids) for ids, _ in seqs], 0)
        labels = [[t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)] for ids, mask in seqs]
        out[f"{name}_labels"] = _pad(labels, IGNORE_INDEX)
    return out


def _lora_grads(model: Any, loss: Any) -> dict[str, Any]:
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def _assert_same_grads(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert ours.keys() == theirs.keys() and len(ours) > 0
    assert all("lora_" in name for name in ours)
    for name, g in theirs.items():
        torch.testing.assert_close(ours[name], g, atol=1e-6, rtol=1e-4, msg=name)


def _value(loss: Any) -> float:
    return float(loss.detach())


def _assert_pairs_disagree(metrics: dict[str, float]) -> None:
    """The batch has teeth: the pairs are not all won or all lost."""
    assert 0.0 < metrics["rewards_accuracy"] < 1.0, metrics


@pytest.mark.parametrize("layout", ["varlen", "rows"])
def test_dpo_equals_trl_dpo_trainer(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path, layout: str
) -> None:
    beta = 0.1
    trainer = _trainer("dpo", tiny_model_dir, tokenizer, tmp_path, beta=beta, loss_type=["sigmoid"])
    model, pad = trainer.model, tokenizer.pad_token_id
    encoded = _encode(tokenizer, PAIRS)

    theirs_loss = trainer._compute_loss(model, _dpo_batch(encoded, pad), return_outputs=False)
    theirs = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    ours_loss, ours = _ours(model, "dpo", encoded, layout, pad, beta=beta)

    assert _value(ours_loss) == pytest.approx(_value(theirs_loss), abs=TOL)
    assert ours["rewards_chosen"] == pytest.approx(theirs["rewards/chosen"], abs=TOL)
    assert ours["rewards_rejected"] == pytest.approx(theirs["rewards/rejected"], abs=TOL)
    assert ours["rewards_margin"] == pytest.approx(theirs["rewards/margins"], abs=TOL)
    assert ours["rewards_accuracy"] == pytest.approx(theirs["rewards/accuracies"], abs=1e-6)
    assert ours["token_accuracy"] == pytest.approx(theirs["mean_token_accuracy"], abs=1e-6)
    # The comparison has teeth: the policy has moved away from the reference, and not uniformly.
    assert abs(theirs["rewards/chosen"]) > 1e-3 and abs(_value(theirs_loss) - math.log(2)) > 1e-3
    _assert_pairs_disagree(ours)
    _assert_same_grads(
        _lora_grads(model, ours_loss),
        _lora_grads(model, trainer._compute_loss(model, _dpo_batch(encoded, pad), return_outputs=False)),
    )


def test_simpo_equals_trl_cpo_trainer(tiny_model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    beta, ratio = 2.0, 0.5
    trainer = _trainer(
        "simpo",
        tiny_model_dir,
        tokenizer,
        tmp_path,
        beta=beta,
        loss_type="simpo",
        cpo_alpha=0.0,  # SimPO alone (CPO's NLL term off)
        simpo_gamma=ratio * beta,  # TRL's γ is absolute; ours is a multiple of β
    )
    model, pad = trainer.model, tokenizer.pad_token_id
    encoded = _encode(tokenizer, PAIRS)

    theirs_loss, theirs = trainer.get_batch_loss_metrics(
        model, _paired_batch(encoded, pad), train_eval="train"
    )
    ours_loss, ours = _ours(model, "simpo", encoded, "rows", pad, beta=beta, gamma_beta_ratio=ratio)

    assert _value(ours_loss) == pytest.approx(_value(theirs_loss), abs=TOL)
    assert ours["rewards_chosen"] == pytest.approx(theirs["rewards/chosen"], abs=TOL)
    assert ours["rewards_rejected"] == pytest.approx(theirs["rewards/rejected"], abs=TOL)
    assert ours["rewards_margin"] == pytest.approx(theirs["rewards/margins"], abs=TOL)
    assert ours["rewards_accuracy"] == pytest.approx(theirs["rewards/accuracies"], abs=1e-6)
    assert theirs["nll_loss"] == 0.0
    _assert_pairs_disagree(ours)
    _assert_same_grads(
        _lora_grads(model, ours_loss),
        _lora_grads(model, trainer.get_batch_loss_metrics(model, _paired_batch(encoded, pad))[0]),
    )


def test_orpo_odds_ratio_term_and_rewards_equal_trl_orpo_trainer(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    beta = 0.1
    trainer = _trainer("orpo", tiny_model_dir, tokenizer, tmp_path, beta=beta)
    model, pad = trainer.model, tokenizer.pad_token_id
    encoded = _encode(tokenizer, PAIRS)

    theirs_loss, theirs = trainer.get_batch_loss_metrics(
        model, _paired_batch(encoded, pad), train_eval="train"
    )
    ours_loss, ours = _ours(model, "orpo", encoded, "rows", pad, beta=beta)

    assert ours["rewards_chosen"] == pytest.approx(theirs["rewards/chosen"], abs=TOL)
    assert ours["rewards_rejected"] == pytest.approx(theirs["rewards/rejected"], abs=TOL)
    assert ours["rewards_accuracy"] == pytest.approx(theirs["rewards/accuracies"], abs=1e-6)
    # Rewards are β x the answers' mean token log-probability: TRL's logps/chosen is its batch mean.
    assert ours["rewards_chosen"] / beta == pytest.approx(theirs["logps/chosen"], abs=TOL)
    # Our loss = mean(-avg_chosen) - β mean(log σ(log odds)); TRL's odds-ratio term is β x log_odds_ratio.
    ours_odds_term = _value(ours_loss) + ours["rewards_chosen"] / beta
    assert ours_odds_term == pytest.approx(-beta * theirs["log_odds_ratio"], abs=TOL)
    assert _value(theirs_loss) == pytest.approx(theirs["nll_loss"] - beta * theirs["log_odds_ratio"], abs=TOL)
    _assert_pairs_disagree(ours)
    # The NLL terms differ here (TRL's covers the prompts too), so the whole losses do.
    assert abs(_value(ours_loss) - _value(theirs_loss)) > 0.1


def test_orpo_equals_trl_orpo_trainer_where_their_nll_terms_coincide(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    beta = 0.1
    # One-token prompts (TRL's NLL has no prompt token to predict) and chosen answers of one length (its token
    # mean over the batch is then the mean of the pairs' means).
    pairs = [
        Pair(tokenizer.bos_token, " says meow.", " woof"),
        Pair("Repeat", " says moo.", " says woof, I think."),
        Pair("You", " says baa.", " green"),
        Pair("quack", " says neigh.", " says meow and moo."),
    ]
    encoded = _encode(tokenizer, pairs)
    for (_, c_mask), _ in encoded:
        assert c_mask.index(True) == 1, "a prompt is not one token with this tokenizer"
    assert len({sum(mask) for (_, mask), _ in encoded}) == 1, "the chosen answers are not equally long"
    assert len({sum(mask) for _, (_, mask) in encoded}) > 1

    trainer = _trainer("orpo", tiny_model_dir, tokenizer, tmp_path, beta=beta)
    model, pad = trainer.model, tokenizer.pad_token_id
    theirs_loss, theirs = trainer.get_batch_loss_metrics(
        model, _paired_batch(encoded, pad), train_eval="train"
    )
    ours_loss, ours = _ours(model, "orpo", encoded, "varlen", pad, beta=beta)

    assert _value(ours_loss) == pytest.approx(_value(theirs_loss), abs=TOL)
    assert -ours["rewards_chosen"] / beta == pytest.approx(theirs["nll_loss"], abs=TOL)
    assert ours["rewards_margin"] == pytest.approx(theirs["rewards/margins"], abs=TOL)
    assert ours["rewards_accuracy"] == pytest.approx(theirs["rewards/accuracies"], abs=1e-6)
    _assert_same_grads(
        _lora_grads(model, ours_loss),
        _lora_grads(model, trainer.get_batch_loss_metrics(model, _paired_batch(encoded, pad))[0]),
    )

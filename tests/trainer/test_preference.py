"""Preference pairs on the trainer's side: validation of the two pair formats (every error code with its
line), the method/format check, the pair encoding and its answer-only mask, tokenisation, plans and layouts
that keep each pair together, and PreferenceLoss's invariants (a no-op adapter; batching and packing) and
formulas. Its agreement with TRL's trainers: test_preference_trl.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tuning_trainer import data
from tuning_trainer.batching import IGNORE_INDEX, lay_out, make_plan
from tuning_trainer.config import JobConfig
from tuning_trainer.data import DataError, Pair, method_mismatch, pair_of, validate_file
from tuning_trainer.dataset import encode_pair, tokenize_file


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """One torch thread while this module runs: on 2 shared cores a second one made the model tests 2-4x
    slower (measured), as tests/conftest.py found for the trainer."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- validation --------------------------------------------------------------------------------------------

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does the cat say?"}]
PREFERENCE: dict[str, Any] = {
    "input": {"messages": PROMPT},
    "preferred_output": [{"role": "assistant", "content": "The cat says meow."}],
    "non_preferred_output": [{"role": "assistant", "content": "The cat says woof."}],
}
CHOSEN_REJECTED: dict[str, Any] = {"prompt": "What does the cow say? ", "chosen": "moo", "rejected": "woof"}


def write_lines(path: Path, rows: list[Any]) -> Path:
    """One JSON value a line; a str is written as it is (a blank line, broken JSON)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`base` with keys replaced (a value of None removes the key)."""
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not None}


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        (PREFERENCE, "preference"),
        (CHOSEN_REJECTED, "chosen_rejected"),
        # Each part of a chosen_rejected pair may be a string or messages, mixed freely.
        ({"prompt": PROMPT, "chosen": "moo", "rejected": assistant("woof")}, "chosen_rejected"),
        ({"prompt": "Say moo.", "chosen": assistant("moo"), "rejected": "woof"}, "chosen_rejected"),
        ({"prompt": PROMPT, "chosen": assistant("moo"), "rejected": assistant("woof")}, "chosen_rejected"),
        # An answer may run over several assistant turns.
        (with_(PREFERENCE, preferred_output=assistant("Meow.") + assistant("Purr.")), "preference"),
    ],
    ids=["preference", "chosen-rejected", "messages-prompt", "messages-chosen", "all-messages", "two-turns"],
)
def test_both_pair_formats_are_detected(tmp_path: Path, record: dict[str, Any], fmt: str) -> None:
    path = write_lines(tmp_path / "d.jsonl", [record, "", record, record])
    summary = validate_file(path)
    assert (summary.format, summary.num_examples) == (fmt, 3)
    assert summary.num_characters > 0
    assert fmt in data.PREFERENCE_FORMATS and fmt in data.FORMATS


def test_pair_of_reads_both_formats() -> None:
    pair = pair_of(PREFERENCE, "preference")
    assert pair == Pair(PROMPT, assistant("The cat says meow."), assistant("The cat says woof."))
    assert pair.conversational
    text = pair_of(CHOSEN_REJECTED, "chosen_rejected")
    assert text == Pair("What does the cow say? ", "moo", "woof") and not text.conversational
    mixed = Pair("Say moo.", assistant("moo"), "woof")
    assert mixed.conversational
    assert mixed.as_messages() == (
        [{"role": "user", "content": "Say moo."}],
        assistant("moo"),
        assistant("woof"),
    )


BAD_RECORDS: list[tuple[str, Any, str]] = [
    # missing_prompt: absent, empty, blank, an empty list, messages that say nothing
    ("no-prompt", with_(CHOSEN_REJECTED, prompt=None), data.MISSING_PROMPT),
    ("empty-prompt", with_(CHOSEN_REJECTED, prompt=""), data.MISSING_PROMPT),
    ("blank-prompt", with_(CHOSEN_REJECTED, prompt="  \n"), data.MISSING_PROMPT),
    ("empty-list-prompt", with_(CHOSEN_REJECTED, prompt=[]), data.MISSING_PROMPT),
    (
        "silent-prompt",
        with_(CHOSEN_REJECTED, prompt=[{"role": "user", "content": " "}]),
        data.MISSING_PROMPT,
    ),
    ("no-input", with_(PREFERENCE, input=None), data.MISSING_PROMPT),
    ("input-without-messages", with_(PREFERENCE, input={}), data.MISSING_PROMPT),
    ("input-empty-messages", with_(PREFERENCE, input={"messages": []}), data.MISSING_PROMPT),
    # missing_chosen
    ("no-chosen", with_(CHOSEN_REJECTED, chosen=None), data.MISSING_CHOSEN),
    ("empty-chosen", with_(CHOSEN_REJECTED, chosen=""), data.MISSING_CHOSEN),
    ("blank-chosen", with_(CHOSEN_REJECTED, chosen=" "), data.MISSING_CHOSEN),
    ("empty-list-chosen", with_(CHOSEN_REJECTED, chosen=[]), data.MISSING_CHOSEN),
    ("silent-chosen", with_(CHOSEN_REJECTED, chosen=assistant("  ")), data.MISSING_CHOSEN),
    ("no-preferred", with_(PREFERENCE, preferred_output=None), data.MISSING_CHOSEN),
    ("empty-preferred", with_(PREFERENCE, preferred_output=[]), data.MISSING_CHOSEN),
    # missing_rejected
    ("no-rejected", with_(CHOSEN_REJECTED, rejected=None), data.MISSING_REJECTED),
    ("blank-rejected", with_(CHOSEN_REJECTED, rejected="\t"), data.MISSING_REJECTED),
    ("no-non-preferred", with_(PREFERENCE, non_preferred_output=None), data.MISSING_REJECTED),
    ("silent-non-preferred", with_(PREFERENCE, non_preferred_output=assistant("")), data.MISSING_REJECTED),
    # identical_outputs: the same text, up to surrounding whitespace, whether string or messages
    ("identical", with_(CHOSEN_REJECTED, rejected="moo"), data.IDENTICAL_OUTPUTS),
    ("identical-but-spaces", with_(CHOSEN_REJECTED, chosen=" moo", rejected="moo\n"), data.IDENTICAL_OUTPUTS),
    ("identical-string-messages", with_(CHOSEN_REJECTED, rejected=assistant("moo")), data.IDENTICAL_OUTPUTS),
    (
        "identical-preference",
        with_(PREFERENCE, non_preferred_output=PREFERENCE["preferred_output"]),
        data.IDENTICAL_OUTPUTS,
    ),
    # invalid_output_role: an answer's turns are the assistant's
    (
        "user-preferred",
        with_(PREFERENCE, preferred_output=[{"role": "user", "content": "meow"}]),
        data.INVALID_OUTPUT_ROLE,
    ),
    (
        "system-rejected",
        with_(CHOSEN_REJECTED, rejected=[{"role": "system", "content": "woof"}]),
        data.INVALID_OUTPUT_ROLE,
    ),
    (
        "second-turn-user",
        with_(PREFERENCE, non_preferred_output=[*assistant("a"), {"role": "user", "content": "b"}]),
        data.INVALID_OUTPUT_ROLE,
    ),
    # invalid_field: wrong types and unknown roles
    ("number-prompt", with_(CHOSEN_REJECTED, prompt=3), data.INVALID_FIELD),
    ("number-chosen", with_(CHOSEN_REJECTED, chosen=3), data.INVALID_FIELD),
    (
        "object-rejected",
        with_(CHOSEN_REJECTED, rejected={"role": "assistant", "content": "w"}),
        data.INVALID_FIELD,
    ),
    ("string-input", with_(PREFERENCE, input="What does the cat say?"), data.INVALID_FIELD),
    ("unknown-role", with_(CHOSEN_REJECTED, prompt=[{"role": "wizard", "content": "q"}]), data.INVALID_FIELD),
    (
        "unknown-answer-role",
        with_(CHOSEN_REJECTED, chosen=[{"role": "wizard", "content": "q"}]),
        data.INVALID_FIELD,
    ),
    (
        "non-string-content",
        with_(PREFERENCE, preferred_output=[{"role": "assistant", "content": 1}]),
        data.INVALID_FIELD,
    ),
    ("non-object-message", with_(CHOSEN_REJECTED, prompt=["hi"]), data.INVALID_FIELD),
]


@pytest.mark.parametrize(("record", "code"), [r[1:] for r in BAD_RECORDS], ids=[r[0] for r in BAD_RECORDS])
def test_each_bad_pair_has_its_code_and_line(tmp_path: Path, record: dict[str, Any], code: str) -> None:
    # A good record in the same format first, and a blank line: the bad record is on line 3.
    good = PREFERENCE if "input" in record or "preferred_output" in record else CHOSEN_REJECTED
    path = write_lines(tmp_path / "d.jsonl", [good, "", record, good])
    with pytest.raises(DataError) as info:
        validate_file(path)
    assert (info.value.code, info.value.line) == (code, 3), info.value.message
    assert info.value.message.startswith("line 3: ")
    assert info.value.to_dict() == {"code": code, "message": info.value.message, "line": 3}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (PREFERENCE, CHOSEN_REJECTED),
        (CHOSEN_REJECTED, PREFERENCE),
        ({"messages": PROMPT + assistant("meow")}, CHOSEN_REJECTED),
        (CHOSEN_REJECTED, {"prompt": "2+2=", "completion": "4"}),
    ],
    ids=[
        "preference-then-chosen-rejected",
        "chosen-rejected-then-preference",
        "chat-then-pair",
        "pair-then-sft",
    ],
)
def test_pair_formats_do_not_mix(tmp_path: Path, first: dict[str, Any], second: dict[str, Any]) -> None:
    path = write_lines(tmp_path / "d.jsonl", [first, first, second])
    with pytest.raises(DataError) as info:
        validate_file(path)
    assert (info.value.code, info.value.line) == (data.MIXED_FORMATS, 3)


def test_every_new_code_is_listed() -> None:
    for code in (
        "missing_prompt",
        "missing_chosen",
        "missing_rejected",
        "identical_outputs",
        "invalid_output_role",
    ):
        assert code in data.CODES
    assert data.FORMAT_MISMATCH == "format_mismatch" and data.FORMAT_MISMATCH in data.PLAN_CODES


def test_the_shipped_preference_files_validate(repo_root: Path) -> None:
    for name in ("preference_train.jsonl", "preference_valid.jsonl"):
        path = repo_root / "data" / name
        if not path.exists():
            pytest.skip(f"data/{name} is not in this checkout")
        summary = validate_file(path)
        assert summary.format in data.PREFERENCE_FORMATS and summary.num_examples > 0


# ---- the method must suit the file -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", data.FORMATS)
@pytest.mark.parametrize("method", ["sft", "dpo", "orpo", "simpo"])
def test_method_mismatch(fmt: str, method: str) -> None:
    reason = method_mismatch(fmt, method)
    suits = (fmt in data.PREFERENCE_FORMATS) == (method != "sft")
    assert (reason is None) == suits
    if reason is not None:
        assert repr(fmt) in reason and repr(method) in reason


def _job(
    tmp_path: Path, method: str, train: dict[str, Any], valid: dict[str, Any] | None = None
) -> JobConfig:
    training = write_lines(tmp_path / "train.jsonl", [train, train])
    validation = write_lines(tmp_path / "valid.jsonl", [valid]) if valid is not None else None
    return JobConfig(
        model="tiny",
        training_file=str(training),
        validation_file=str(validation) if validation else None,
        output_dir=str(tmp_path / "out"),
        method=method,  # type: ignore[arg-type]
    )


CHAT = {"messages": PROMPT + assistant("meow")}


@pytest.mark.parametrize(
    ("method", "train", "valid", "field"),
    [
        ("sft", PREFERENCE, None, "training_file"),
        ("sft", CHOSEN_REJECTED, None, "training_file"),
        ("dpo", CHAT, None, "training_file"),
        ("orpo", {"text": "plain"}, None, "training_file"),
        ("simpo", {"prompt": "2+2=", "completion": "4"}, None, "training_file"),
        ("dpo", PREFERENCE, CHAT, "validation_file"),
        ("sft", CHAT, CHOSEN_REJECTED, "validation_file"),
    ],
)
def test_a_file_that_does_not_suit_the_method_is_invalid_data(
    tmp_path: Path, method: str, train: dict[str, Any], valid: dict[str, Any] | None, field: str
) -> None:
    from tuning_trainer.errors import EXIT_USER_ERROR, INVALID_DATA, TrainerError

    with pytest.raises(TrainerError) as info:
        data.summarise_job_files(_job(tmp_path, method, train, valid))
    err = info.value
    assert (err.code, err.exit_code) == (INVALID_DATA, EXIT_USER_ERROR)
    assert err.extra == {"data_code": data.FORMAT_MISMATCH, "line": None, "file": field}
    assert err.message.startswith(f"{field} ")


@pytest.mark.parametrize("method", ["dpo", "orpo", "simpo"])
def test_a_pair_file_suits_every_preference_method(tmp_path: Path, method: str) -> None:
    train, valid = data.summarise_job_files(_job(tmp_path, method, PREFERENCE, CHOSEN_REJECTED))
    assert (train.format, train.num_examples) == ("preference", 2)
    assert valid is not None and valid.format == "chosen_rejected"


def test_a_bad_pair_line_in_a_job_file_keeps_its_code_and_line(tmp_path: Path) -> None:
    from tuning_trainer.errors import TrainerError

    path = write_lines(tmp_path / "train.jsonl", [PREFERENCE, with_(PREFERENCE, preferred_output=None)])
    cfg = JobConfig(model="tiny", training_file=str(path), output_dir=str(tmp_path / "out"), method="dpo")
    with pytest.raises(TrainerError) as info:
        data.summarise_job_files(cfg)
    assert info.value.extra == {"data_code": data.MISSING_CHOSEN, "line": 2, "file": "training_file"}


# ---- encoding: only the answer is trained ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from tuning_trainer.modelling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def masked_text(tok: Any, ids: list[int], mask: list[bool]) -> str:
    return tok.decode([t for t, m in zip(ids, mask, strict=True) if m])


MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does the cat say?"},
    {"role": "assistant", "content": "The cat says meow."},
    {"role": "user", "content": "And the dog?"},
]


@pytest.mark.parametrize(
    ("pair", "chosen", "rejected"),
    [
        (Pair("What does the cow say? ", "moo", "woof woof"), "moo", "woof woof"),
        (Pair(PROMPT, assistant("The cat says meow."), assistant("Woof.")), "The cat says meow.", "Woof."),
        (Pair("Say moo.", assistant("moo"), "woof"), "moo", "woof"),
        # The prompt's own assistant turn ("The cat says meow.") is context, not a target.
        (
            Pair(MULTI_TURN, "The dog says woof.", "The dog says moo."),
            "The dog says woof.",
            "The dog says moo.",
        ),
    ],
    ids=["text", "messages", "mixed", "multi-turn"],
)
def test_only_the_answer_and_its_eos_are_targets(
    tokenizer: Any, pair: Pair, chosen: str, rejected: str
) -> None:
    (c_ids, c_mask), (r_ids, r_mask) = encode_pair(pair, tokenizer)
    eos = tokenizer.eos_token
    assert masked_text(tokenizer, c_ids, c_mask) == chosen + eos
    assert masked_text(tokenizer, r_ids, r_mask) == rejected + eos
    for ids, mask, answer in ((c_ids, c_mask, chosen), (r_ids, r_mask, rejected)):
        assert len(ids) == len(mask)
        # One contiguous span, after the prompt, with the answer's text in the sequence once trained.
        marked = [i for i, m in enumerate(mask) if m]
        assert marked == list(range(marked[0], marked[-1] + 1)) and marked[0] > 0
        assert answer in tokenizer.decode(ids)
    # Both sequences open with the same prompt tokens: exactly the positions before the answer.
    start = c_mask.index(True)
    assert c_ids[:start] == r_ids[:start] and r_mask.index(True) == start
    if pair.conversational:
        assert tokenizer.decode(c_ids[:start]).endswith("<|im_start|>assistant\n")


def test_the_prompts_assistant_turn_is_in_the_sequence_but_not_trained(tokenizer: Any) -> None:
    (ids, mask), _ = encode_pair(Pair(MULTI_TURN, "The dog says woof.", "Moo."), tokenizer)
    text = tokenizer.decode(ids)
    assert "The cat says meow." in text and "The dog says woof." in text
    assert "meow" not in masked_text(tokenizer, ids, mask)
    # The whole conversation's mask (encode_chat) would train the earlier turn: encode_pair leaves it out.
    from tuning_trainer.dataset import encode_chat

    whole = encode_chat([*MULTI_TURN, *assistant("The dog says woof.")], tokenizer)
    assert whole[0] == ids and "meow" in masked_text(tokenizer, *whole)


def test_a_template_without_generation_tags_masks_the_same_answer(tokenizer: Any) -> None:
    import copy

    plain = copy.copy(tokenizer)
    plain.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    pair = Pair(MULTI_TURN, "The dog says woof.", "The dog says moo.")
    for (ids, mask), (p_ids, p_mask) in zip(
        encode_pair(pair, tokenizer), encode_pair(pair, plain), strict=True
    ):
        assert p_ids == ids
        # The span method also marks the newline that closes the turn (as for chat: test_dataset.py).
        assert masked_text(plain, p_ids, p_mask).rstrip("\n") == masked_text(tokenizer, ids, mask)


# ---- tokenize_file -----------------------------------------------------------------------------------------


def test_pairs_tokenise_as_chosen_rejected_in_order(tokenizer: Any, tmp_path: Path) -> None:
    rows = [
        {"prompt": PROMPT, "chosen": assistant("The cat says meow."), "rejected": "The cat says woof."},
        CHOSEN_REJECTED,
        {"prompt": MULTI_TURN, "chosen": "The dog says woof.", "rejected": assistant("The dog says moo.")},
    ]
    path = write_lines(tmp_path / "d.jsonl", rows)
    fmt = validate_file(path).format
    tokenized = tokenize_file(path, fmt, tokenizer, max_seq_length=512)
    assert tokenized.group == 2 and len(tokenized.examples) == 6
    expected = [
        "The cat says meow.",
        "The cat says woof.",
        "moo",
        "woof",
        "The dog says woof.",
        "The dog says moo.",
    ]
    for ex, answer in zip(tokenized.examples, expected, strict=True):
        assert (
            tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == answer + tokenizer.eos_token
        )
        assert len(ex["labels"]) == len(ex["input_ids"])
        assert all(t in (IGNORE_INDEX, i) for t, i in zip(ex["labels"], ex["input_ids"], strict=True))
    stats = tokenized.stats()
    assert stats["num_examples"] == 3  # pairs, not sequences
    assert (stats["truncated_examples"], stats["dropped_examples"]) == (0, 0)
    assert stats["num_tokens"] == sum(len(ex["input_ids"]) for ex in tokenized.examples)
    assert stats["num_target_tokens"] == sum(
        sum(t != IGNORE_INDEX for t in ex["labels"][1:]) for ex in tokenized.examples
    )
    # A pair of the file is exactly encode_pair's two sequences.
    for k, row in enumerate(rows):
        encoded = encode_pair(pair_of(row, fmt), tokenizer)
        assert [ex["input_ids"] for ex in tokenized.examples[2 * k : 2 * k + 2]] == [
            ids for ids, _ in encoded
        ]


def test_the_preference_format_tokenises_as_its_chosen_rejected_twin(tokenizer: Any, tmp_path: Path) -> None:
    twin = {
        "prompt": PREFERENCE["input"]["messages"],
        "chosen": PREFERENCE["preferred_output"],
        "rejected": PREFERENCE["non_preferred_output"],
    }
    a = tokenize_file(
        write_lines(tmp_path / "a.jsonl", [PREFERENCE]), "preference", tokenizer, max_seq_length=512
    )
    b = tokenize_file(
        write_lines(tmp_path / "b.jsonl", [twin]), "chosen_rejected", tokenizer, max_seq_length=512
    )
    assert a.examples == b.examples and a.group == b.group == 2


def test_a_long_pair_loses_the_start_of_its_prompt_then_the_end_of_its_answers(
    tokenizer: Any, tmp_path: Path
) -> None:
    long_prompt = {"prompt": "one two three four " * 20 + "Last words.", "chosen": "yes", "rejected": "no"}
    long_answer = {"prompt": "Count.", "chosen": "one two three four " * 20, "rejected": "one"}
    short = {"prompt": "Say yes.", "chosen": "yes", "rejected": "no"}
    path = write_lines(tmp_path / "d.jsonl", [long_prompt, long_answer, short])
    tokenized = tokenize_file(path, "chosen_rejected", tokenizer, max_seq_length=24)
    # Nothing is dropped: the long prompt keeps its end (the same on both sides), the long answer is cut.
    assert (tokenized.dropped, tokenized.truncated, len(tokenized.examples)) == (0, 2, 6)
    assert tokenized.stats()["num_examples"] == 3
    assert all(len(ex["input_ids"]) <= 24 for ex in tokenized.examples)
    chosen, rejected = tokenized.examples[0], tokenized.examples[1]
    head = [t for t, lab in zip(chosen["input_ids"], chosen["labels"], strict=True) if lab == IGNORE_INDEX]
    assert rejected["input_ids"][: len(head)] == head  # one prompt for both answers
    assert tokenizer.decode(head).rstrip().endswith("Last words.")
    answers = [tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) for ex in tokenized.examples]
    assert answers[:2] == ["yes" + tokenizer.eos_token, "no" + tokenizer.eos_token]
    assert answers[2].startswith("one two three") and answers[3] == "one" + tokenizer.eos_token
    assert answers[4:] == ["yes" + tokenizer.eos_token, "no" + tokenizer.eos_token]


def test_the_shipped_preference_file_tokenises_without_loss(tokenizer: Any, repo_root: Path) -> None:
    path = repo_root / "data" / "preference_train.jsonl"
    if not path.exists():
        pytest.skip("data/preference_train.jsonl is not in this checkout")
    summary = validate_file(path)
    tokenized = tokenize_file(path, summary.format, tokenizer, max_seq_length=1024)
    assert (len(tokenized.examples), tokenized.truncated, tokenized.dropped) == (
        2 * summary.num_examples,
        0,
        0,
    )


# ---- plans and layouts keep each pair together -------------------------------------------------------------


def assert_pairs_intact(batches: list[list[int]]) -> None:
    for batch in batches:
        assert len(batch) % 2 == 0, batch
        assert all(c % 2 == 0 and r == c + 1 for c, r in zip(batch[0::2], batch[1::2], strict=True)), batch


# 9 pairs of uneven lengths (chosen, rejected).
PAIR_LENGTHS = [30, 12, 5, 9, 17, 17, 40, 3, 8, 22, 11, 13, 6, 6, 25, 2, 14, 19]


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("world", [1, 2])
def test_plans_keep_each_pair_together_and_in_order(packing: bool, world: int) -> None:
    plan = make_plan(
        PAIR_LENGTHS, packing=packing, batch_size=2, max_tokens_per_batch=50, world=world, group=2
    )
    assert all(len(unit) % 2 == 0 for unit in plan.units)
    assert sorted(i for unit in plan.units for i in unit) == list(range(len(PAIR_LENGTHS)))
    seen: list[int] = []
    for epoch in range(3):
        ranks = plan.epoch(epoch, seed=11)
        assert len(ranks) == world
        assert len({len(r) for r in ranks}) == 1  # every process takes as many steps
        for batches in ranks:
            assert_pairs_intact(batches)
            if not packing:
                assert all(len(b) <= 2 * 2 for b in batches)  # batch_size counts pairs
            else:
                # A bin holds whole pairs within the budget (a pair longer than it trains alone).
                assert all(sum(PAIR_LENGTHS[i] for i in b) <= 50 or len(b) == 2 for b in batches)
        if epoch == 0:
            seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen))  # the processes' shares are disjoint
    # What an epoch trains is whole units: per_rank of them on each process (the rest sit the epoch out).
    taken = [u for u in plan.units if set(u) & set(seen)]
    assert all(set(u) <= set(seen) for u in taken) and len(taken) == world * plan.per_rank
    if world == 1:
        assert sorted(seen) == list(range(len(PAIR_LENGTHS)))


def test_a_packed_pair_never_splits_across_bins() -> None:
    # The pair (40, 3) is 43 tokens: its 3-token rejected sequence would fit elsewhere, but stays with it.
    plan = make_plan(PAIR_LENGTHS, packing=True, batch_size=1, max_tokens_per_batch=45, group=2)
    (batches,) = plan.epoch(0, seed=0)
    assert_pairs_intact(batches)
    home = next(b for b in batches if 6 in b)
    assert home[home.index(6) + 1] == 7
    # Group 1 (SFT) over the same lengths packs sequences freely: the plans differ.
    free = make_plan(PAIR_LENGTHS, packing=True, batch_size=1, max_tokens_per_batch=45)
    assert any(
        len(u) % 2 or any(c % 2 or r != c + 1 for c, r in zip(u[0::2], u[1::2], strict=False))
        for u in free.units
    )


def _examples(lengths: list[int]) -> list[dict[str, list[int]]]:
    out = []
    start = 10
    for n in lengths:
        ids = list(range(start, start + n))
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX, *ids[1:]]})
        start += 100
    return out


@pytest.mark.parametrize("layout", ["varlen", "rows"])
def test_lay_out_says_which_example_owns_each_position(layout: str) -> None:
    examples = _examples([5, 2, 3, 4])
    laid = lay_out(examples, layout, pad_token_id=0)  # type: ignore[arg-type]
    assert [len(r) for r in laid.owners] == [len(r) for r in laid.input_ids]
    for row_ids, row_pos, row_own in zip(laid.input_ids, laid.position_ids, laid.owners, strict=True):
        for token, pos, owner in zip(row_ids, row_pos, row_own, strict=True):
            if owner == -1:
                assert token == 0
            else:
                assert examples[owner]["input_ids"][pos] == token
    flat = [o for row in laid.owners for o in row]
    assert {o: flat.count(o) for o in set(flat) if o >= 0} == {
        i: len(e["input_ids"]) for i, e in enumerate(examples)
    }
    if layout == "varlen":
        assert laid.owners == [[0] * 5 + [1] * 2 + [2] * 3 + [3] * 4]
    else:
        # Rows as wide as the longest (5), filled by best fit: 5 | 4 and a pad | 3 + 2.
        assert laid.owners == [[0] * 5, [3] * 4 + [-1], [2] * 3 + [1] * 2]


def test_batch_tensors_name_each_targets_sequence() -> None:
    torch = pytest.importorskip("torch")
    from tuning_trainer.objective import batch_tensors

    examples = _examples([5, 2, 3, 4])
    for layout in ("varlen", "rows"):
        laid = lay_out(examples, layout, pad_token_id=0)  # type: ignore[arg-type]
        t = batch_tensors(laid, torch.device("cpu"), pairs=True)
        assert t["num_seqs"] == 4
        counts = torch.bincount(t["target_seq"], minlength=4).tolist()
        assert counts == [len(e["input_ids"]) - 1 for e in examples]  # every position but the last
        # Each target is the next token of its own sequence.
        for seq, target in zip(t["target_seq"].tolist(), t["target_ids"].tolist(), strict=True):
            assert target in examples[seq]["input_ids"]


# ---- PreferenceLoss ----------------------------------------------------------------------------------------

LOSS_PAIRS = [
    Pair("What does the cow say? ", "moo", "woof woof"),
    Pair(PROMPT, assistant("The cat says meow."), assistant("The cat says woof, I think.")),
    Pair(MULTI_TURN, "The dog says woof.", "Moo."),
    Pair("Spell the number 7.", "seven", "7 is spelled three, or maybe eight."),
]


def _model(tiny_model_dir: Path, *, random_b: bool) -> Any:
    torch = pytest.importorskip("torch")
    from tuning_trainer.modelling import ModelSource, load_model

    cfg = JobConfig(
        model=str(tiny_model_dir), training_file="-", output_dir="-", method="dpo", adapter="lora"
    )
    torch.manual_seed(0)
    model, _ = load_model(cfg, ModelSource("local", str(tiny_model_dir)), torch.device("cpu"))
    if random_b:  # policy != reference
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _pair_examples(tokenizer: Any, pairs: list[Pair]) -> list[dict[str, list[int]]]:
    out = []
    for pair in pairs:
        for ids, mask in encode_pair(pair, tokenizer):
            out.append(
                {
                    "input_ids": ids,
                    "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)],
                }
            )
    return out


def _run(loss_fn: Any, examples: list[dict[str, list[int]]], layout: str, pad_id: int) -> tuple[Any, Any]:
    import torch

    from tuning_trainer.objective import batch_tensors

    inputs = batch_tensors(lay_out(examples, layout, pad_id), torch.device("cpu"), pairs=True)  # type: ignore[arg-type]
    with torch.no_grad():
        return loss_fn(**inputs)


def test_a_no_op_adapter_gives_zero_dpo_rewards_and_log2_per_pair(
    tiny_model_dir: Path, tokenizer: Any
) -> None:
    from tuning_trainer.objective import PreferenceLoss

    model = _model(tiny_model_dir, random_b=False)
    assert all(float(p.detach().abs().max()) == 0.0 for n, p in model.named_parameters() if "lora_B" in n)
    examples = _pair_examples(tokenizer, LOSS_PAIRS)
    loss_fn = PreferenceLoss(model, method="dpo", beta=0.1)
    for layout in ("varlen", "rows"):
        loss, stats = _run(loss_fn, examples, layout, tokenizer.pad_token_id)
        chosen, rejected, won, hits, tokens = stats.tolist()
        assert (chosen, rejected, won) == (0.0, 0.0, 0.0)  # exactly: the adapter adds zeros
        assert float(loss) == pytest.approx(len(LOSS_PAIRS) * math.log(2), rel=1e-6)
        assert tokens == sum(sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in examples[0::2])
        assert 0 <= hits <= tokens


@pytest.mark.parametrize("method", ["dpo", "simpo", "orpo"])
def test_per_pair_results_do_not_depend_on_batching(
    tiny_model_dir: Path, tokenizer: Any, method: str
) -> None:
    """All pairs in one varlen row, in padded rows, and each pair alone: the same sums, pair by pair."""
    import torch

    from tuning_trainer.objective import PreferenceLoss

    model = _model(tiny_model_dir, random_b=True)
    loss_fn = PreferenceLoss(model, method=method, beta=2.0 if method == "simpo" else 0.1)
    examples = _pair_examples(tokenizer, LOSS_PAIRS)
    pad = tokenizer.pad_token_id
    assert len(lay_out(examples, "rows", pad).input_ids) < len(examples)  # sequences really share rows
    varlen = _run(loss_fn, examples, "varlen", pad)
    rows = _run(loss_fn, examples, "rows", pad)
    alone = [_run(loss_fn, examples[2 * k : 2 * k + 2], "varlen", pad) for k in range(len(LOSS_PAIRS))]
    alone_loss = sum(loss for loss, _ in alone)
    alone_stats = torch.stack([stats for _, stats in alone]).sum(0)
    for loss, stats in (rows, (alone_loss, alone_stats)):
        torch.testing.assert_close(loss, varlen[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats, varlen[1], atol=1e-5, rtol=1e-5)
    # Not trivially equal: the pairs differ, and the adapter moved the policy.
    losses = [float(loss) for loss, _ in alone]
    assert max(losses) - min(losses) > 1e-3
    if method == "dpo":
        assert float(varlen[1][0] - varlen[1][1]) != 0.0


@pytest.mark.parametrize("method", ["dpo", "simpo", "orpo"])
def test_preference_loss_equals_its_formula_on_hf_logits(
    tiny_model_dir: Path, tokenizer: Any, method: str
) -> None:
    """The docstring's formulas, computed from the model's own padded-batch logits (no TRL needed)."""
    import torch
    import torch.nn.functional as F

    from tuning_trainer.objective import PreferenceLoss

    model = _model(tiny_model_dir, random_b=True)
    beta, ratio = (2.0, 0.5) if method == "simpo" else (0.1, 0.5)
    examples = _pair_examples(tokenizer, LOSS_PAIRS)
    loss, stats = _run(
        PreferenceLoss(model, method=method, beta=beta, gamma_beta_ratio=ratio), examples, "rows", 0
    )

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in examples])
    attention = torch.tensor(
        [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples]
    )
    labels = torch.tensor([e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in examples])[
        :, 1:
    ]
    keep = labels != IGNORE_INDEX

    def logps(adapter: bool) -> tuple[Any, Any]:
        with torch.no_grad():
            if adapter:
                logits = model(input_ids=ids, attention_mask=attention).logits
            else:
                with model.disable_adapter():
                    logits = model(input_ids=ids, attention_mask=attention).logits
        token = logits[:, :-1].float().log_softmax(-1).gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
        hits = (logits[:, :-1].argmax(-1) == labels) & keep
        return (token * keep).sum(1), hits.sum(1)

    policy, hits = logps(True)
    counts = keep.sum(1).float()
    if method == "dpo":
        ref, _ = logps(False)
        reward = beta * (policy - ref)
        per_pair = -F.logsigmoid(reward[0::2] - reward[1::2])
    else:
        avg = policy / counts
        reward = beta * avg
        if method == "simpo":
            per_pair = -F.logsigmoid(reward[0::2] - reward[1::2] - ratio * beta)
        else:
            c, r = avg[0::2], avg[1::2]
            log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
            per_pair = -c - beta * F.logsigmoid(log_odds)
    expected = torch.stack(
        [
            reward[0::2].sum(),
            reward[1::2].sum(),
            (reward[0::2] > reward[1::2]).sum().float(),
            hits[0::2].sum().float(),
            counts[0::2].sum(),
        ]
    )
    torch.testing.assert_close(loss, per_pair.sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats, expected, atol=1e-5, rtol=1e-5)

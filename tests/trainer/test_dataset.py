"""dataset.py: tokenisation of the four formats, the loss mask, truncation (batching: test_batching.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuning_trainer.dataset import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    encode_chat,
    ensure_chat_template,
    tokenize_file,
)

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does the cat say?"},
    {"role": "assistant", "content": "The cat says meow."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "2 plus 3 is 5."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from tuning_trainer.modelling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def targets(tok: Any, ids: list[int], mask: list[bool]) -> str:
    return tok.decode([t for t, m in zip(ids, mask, strict=True) if m])


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chat_mask_covers_exactly_the_assistant_turns(tokenizer: Any) -> None:
    ids, mask = encode_chat(MESSAGES, tokenizer)
    assert targets(tokenizer, ids, mask) == "The cat says meow.<|im_end|>2 plus 3 is 5.<|im_end|>"


def test_template_without_generation_tags_gives_the_same_mask(tokenizer: Any) -> None:
    import copy

    plain = copy.copy(tokenizer)
    plain.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    with_tags = encode_chat(MESSAGES, tokenizer)
    without = encode_chat(MESSAGES, plain)
    assert without[0] == with_tags[0]
    # The span method also marks the newline that closes the turn; everything else matches.
    assert targets(plain, *without).replace("\n", "") == targets(tokenizer, *with_tags)


def test_fallback_template_for_a_tokenizer_without_one(tokenizer: Any) -> None:
    import copy

    bare = copy.copy(tokenizer)
    bare.chat_template = None
    assert ensure_chat_template(bare) is True
    assert bare.chat_template == FALLBACK_CHAT_TEMPLATE
    assert ensure_chat_template(bare) is False
    ids, mask = encode_chat(MESSAGES, bare)
    text = bare.decode(ids)
    assert "### User:\nWhat does the cat say?" in text and "### System:\nBe brief." in text
    assert targets(bare, ids, mask) == "The cat says meow.<|im_end|>2 plus 3 is 5.<|im_end|>"


@pytest.mark.parametrize(
    ("row", "target"),
    [
        ({"prompt": "What does the cow say? ", "completion": "moo"}, "moo<|im_end|>"),
        ({"instruction": "Spell the number.", "input": "4", "output": "four"}, "four<|im_end|>"),
        ({"instruction": "Say hello.", "output": "hello"}, "hello<|im_end|>"),
        ({"text": "The sky is blue."}, "The sky is blue.<|im_end|>"),
    ],
    ids=["completion", "alpaca", "alpaca-no-input", "text"],
)
def test_every_format_tokenises_with_its_mask(
    tokenizer: Any, tmp_path: Path, row: dict[str, str], target: str
) -> None:
    from tuning_trainer.data import validate_file

    path = write(tmp_path / "d.jsonl", [row])
    fmt = validate_file(path).format
    data = tokenize_file(path, fmt, tokenizer, max_seq_length=512)
    (ex,) = data.examples
    assert tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == target
    if "instruction" in row:
        assert "### Instruction:" in tokenizer.decode(ex["input_ids"])
        assert ("### Input:" in tokenizer.decode(ex["input_ids"])) == ("input" in row)


def test_train_on_inputs_trains_every_token(tokenizer: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [{"messages": MESSAGES}])
    (ex,) = tokenize_file(path, "chat", tokenizer, max_seq_length=512, train_on_inputs=True).examples
    assert ex["labels"] == ex["input_ids"]


def test_truncation_is_counted_and_answerless_examples_are_dropped(tokenizer: Any, tmp_path: Path) -> None:
    long_answer = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "one two three four " * 20},
        ]
    }
    long_prompt = {
        "messages": [
            {"role": "user", "content": "one two three four " * 20},
            {"role": "assistant", "content": "ok"},
        ]
    }
    path = write(tmp_path / "d.jsonl", [long_answer, long_prompt, {"messages": MESSAGES[1:3]}])
    data = tokenize_file(path, "chat", tokenizer, max_seq_length=32)
    assert (data.truncated, data.dropped, len(data.examples)) == (2, 1, 2)
    assert all(len(ex["input_ids"]) <= 32 for ex in data.examples)
    assert data.stats()["truncated_examples"] == 2


def test_the_shipped_training_file_tokenises_without_loss(tokenizer: Any) -> None:
    from tests.conftest import REPO_ROOT

    data = tokenize_file(REPO_ROOT / "data" / "train.jsonl", "chat", tokenizer, max_seq_length=1024)
    assert (len(data.examples), data.truncated, data.dropped) == (300, 0, 0)
    assert 0 < data.num_target_tokens < data.num_tokens

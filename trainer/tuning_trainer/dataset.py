"""Tokenisation of the JSONL formats with the loss mask (assistant / completion tokens only by default), and
of preference pairs (two sequences each, prompt + chosen and prompt + rejected, only the answers trained).
How examples are then batched and laid out: batching.py.

Runs after data.validate_file() has accepted the file, so records here are known to be well formed.
Labels use -100 for positions that carry no loss (prompts, system/user turns, padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batching import IGNORE_INDEX
from .data import PREFERENCE_FORMATS, Pair, iter_records, pair_of

# Used when a tokenizer has no chat template of its own. It marks assistant turns with {% generation %} so the
# assistant-only mask comes from the template itself, and it is saved with the adapter's tokenizer so that
# inference renders conversations exactly as training did.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '### Assistant:\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{{ '\\n\\n' }}"
    "{% else %}"
    "{{ '### ' + (message['role'] | capitalize) + ':\\n' + message['content'] + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


@dataclass
class TokenizedData:
    examples: list[dict[str, list[int]]] = field(default_factory=list)
    truncated: int = 0
    # Examples left with no trainable token after truncation (their answer lay past max_seq_length).
    dropped: int = 0
    num_tokens: int = 0
    num_target_tokens: int = 0
    # Sequences per example: 1, or 2 for preference pairs (`examples` then holds chosen, rejected, chosen...).
    group: int = 1

    def stats(self) -> dict[str, int]:
        return {
            "num_examples": len(self.examples) // self.group,
            "truncated_examples": self.truncated,
            "dropped_examples": self.dropped,
            "num_tokens": self.num_tokens,
            "num_target_tokens": self.num_target_tokens,
        }


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template the fallback one. Returns True if the fallback was set."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def _has_generation_tags(tokenizer: Any) -> bool:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), "")
    return "{% generation" in (template or "") or "{%- generation" in (template or "")


def _ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return list(ids)


def encode_chat(messages: list[dict[str, str]], tokenizer: Any) -> tuple[list[int], list[bool]]:
    """Token ids and, per token, whether it belongs to an assistant turn."""
    if _has_generation_tags(tokenizer):
        enc = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = _ids(enc)
        return ids, [bool(m) for m in enc["assistant_masks"]]
    # No {% generation %} markers: find each assistant turn's characters by rendering prefixes of the
    # conversation, then mark the tokens whose characters fall inside those spans.
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_text = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        end_text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if i and text.startswith(end_text) and end_text.startswith(start_text):
            spans.append((len(start_text), len(end_text)))
            cursor = len(end_text)
            continue
        # A template that is not prefix-stable (e.g. rewrites earlier turns): locate the content itself.
        at = text.find(message["content"], cursor)
        if at >= 0:
            spans.append((at, at + len(message["content"]) + 1))
            cursor = at + len(message["content"])
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(s <= a < e for s, e in spans) for a, _ in enc["offset_mapping"]]
    return _ids(enc), mask


def _prompt_completion(prompt: str, completion: str, tokenizer: Any) -> tuple[list[int], list[bool]]:
    prompt_ids = _ids(tokenizer(prompt, add_special_tokens=True)) if prompt else _bos(tokenizer)
    completion_ids = _ids(tokenizer(completion, add_special_tokens=False)) + _eos(tokenizer)
    return prompt_ids + completion_ids, [False] * len(prompt_ids) + [True] * len(completion_ids)


def _bos(tokenizer: Any) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _eos(tokenizer: Any) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def alpaca_prompt(instruction: str, input_text: str | None) -> str:
    has_input = bool(input_text and input_text.strip())
    return ALPACA_PROMPT.format(
        with_input=", paired with an input that provides further context" if has_input else "",
        instruction=instruction,
        input_block=f"### Input:\n{input_text}\n\n" if has_input else "",
    )


def encode_record(record: dict[str, Any], fmt: str, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """(input ids, target mask) for one validated record of format `fmt`."""
    if fmt == "chat":
        return encode_chat(record["messages"], tokenizer)
    if fmt == "completion":
        return _prompt_completion(record["prompt"], record["completion"], tokenizer)
    if fmt == "alpaca":
        prompt = alpaca_prompt(record["instruction"], record.get("input"))
        return _prompt_completion(prompt, record["output"], tokenizer)
    ids = _ids(tokenizer(record["text"], add_special_tokens=True)) + _eos(tokenizer)
    return ids, [True] * len(ids)


def encode_pair(pair: Pair, tokenizer: Any) -> list[tuple[list[int], list[bool]]]:
    """[(ids, mask) of prompt + chosen, (ids, mask) of prompt + rejected]: only the answer's tokens are
    targets (a prompt's own earlier assistant turns are context). Messages go through the chat template, text
    is prompt + answer + EOS as the completion format."""
    if not pair.conversational:
        assert (
            isinstance(pair.prompt, str) and isinstance(pair.chosen, str) and isinstance(pair.rejected, str)
        )
        answers = (pair.chosen, pair.rejected)
        return [_prompt_completion(pair.prompt, str(answer), tokenizer) for answer in answers]
    prompt, chosen, rejected = pair.as_messages()
    head = _ids(
        tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
    )
    out = []
    for answer in (chosen, rejected):
        ids, mask = encode_chat(prompt + answer, tokenizer)
        # Where the prompt's tokens end: their common prefix with the conversation's (a template may render
        # its generation prompt a little differently from the answer's header, or merge tokens at the seam).
        cut = next(
            (i for i, (a, b) in enumerate(zip(head, ids, strict=False)) if a != b), min(len(head), len(ids))
        )
        out.append((ids, [m and i >= cut for i, m in enumerate(mask)]))
    return out


def tokenize_file(
    path: str | Path,
    fmt: str,
    tokenizer: Any,
    *,
    max_seq_length: int,
    train_on_inputs: bool = False,
) -> TokenizedData:
    if fmt in PREFERENCE_FORMATS:
        return _tokenize_pairs(path, fmt, tokenizer, max_seq_length=max_seq_length)
    out = TokenizedData()
    for _, record in iter_records(path):
        ids, mask = encode_record(record, fmt, tokenizer)
        if train_on_inputs:
            labels = list(ids)
        else:
            labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
        if len(ids) > max_seq_length:
            out.truncated += 1
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        # The first token is never a target (nothing precedes it): an example trains on labels[1:].
        targets = sum(1 for t in labels[1:] if t != IGNORE_INDEX)
        if targets == 0:
            out.dropped += 1
            continue
        out.examples.append({"input_ids": ids, "labels": labels})
        out.num_tokens += len(ids)
        out.num_target_tokens += targets
    return out


def _tokenize_pairs(path: str | Path, fmt: str, tokenizer: Any, *, max_seq_length: int) -> TokenizedData:
    """Pairs as two consecutive examples (chosen, rejected), each at most max_seq_length tokens. A pair too
    long loses the start of its prompt first (TRL's keep-end prompt truncation: the last turns and the
    answers matter most), the same tokens on both sides, down to half the budget; then the ends of its
    answers. A pair left with an answer without a token to train on is dropped (it would compare nothing)."""
    out = TokenizedData(group=2)
    for _, record in iter_records(path):
        encoded = encode_pair(pair_of(record, fmt), tokenizer)
        # Both sequences start with the same prompt; the answer is what the mask marks from its first token.
        starts = [next((i for i, m in enumerate(mask) if m), len(mask)) for _, mask in encoded]
        prompt = min(starts)
        longest_answer = max(len(ids) - prompt for ids, _ in encoded)
        keep = min(prompt, max(max_seq_length - longest_answer, max_seq_length // 2))
        sequences = []
        for ids, mask in encoded:
            ids, mask = ids[prompt - keep :], mask[prompt - keep :]
            labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
            sequences.append((ids[:max_seq_length], labels[:max_seq_length]))
        targets = [sum(1 for t in labels[1:] if t != IGNORE_INDEX) for _, labels in sequences]
        if min(targets) == 0:
            out.dropped += 1
            continue
        out.truncated += keep < prompt or any(len(ids) - prompt + keep > max_seq_length for ids, _ in encoded)
        for (ids, labels), n in zip(sequences, targets, strict=True):
            out.examples.append({"input_ids": ids, "labels": labels})
            out.num_tokens += len(ids)
            out.num_target_tokens += n
    return out

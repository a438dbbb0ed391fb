"""Build a tiny, warmed-up Llama model with a locally trained tokenizer and a chat template.

    python -m tuning_trainer.tiny --out DIR [--warmup-steps 300] [--seed 0]

For tests, CI and the demo: nothing is downloaded. The model (hidden 64, 2 layers, 4 heads, 2 KV heads, about
135k parameters) gets a short full-parameter warm-up on generic text and on an "echo" chat task, so that it
knows the chat format and the words but not the tasks in data/train.jsonl: a LoRA run on those then visibly
lowers the loss (a randomly initialised base with a frozen random head barely learns).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# The chat template wraps assistant turns in {% generation %} so that
# apply_chat_template(..., return_assistant_tokens_mask=True) yields the assistant-only loss mask.
# Written on one line: transformers renders templates with trim_blocks, which would eat newlines after tags.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]

_WORDS = """
the a an is are was says say what does colour color of plus minus spelled spell number numbers and
or to in on at it this that with for from by you we they he she I me my your short exact assistant
helpful answer question please thank thanks yes no hello repeat after me echo word words sentence
today tomorrow cat dog cow duck sheep pig horse frog owl lion bee mouse goat snake crow wolf meow
woof moo quack baa oink neigh ribbit hoot roar buzz squeak bleat hiss caw howl sky grass sun snow
coal banana tomato orange plum leaf cherry sea night cloud carrot grape blue green yellow white
black red purple zero one two three four five six seven eight nine ten eleven twelve thirteen
fourteen fifteen sixteen seventeen eighteen system user model small big fast slow good bad new old
runs jumps sees likes eats sleeps
""".split()  # noqa: SIM905 (a word list reads better as text)


def _generic_sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randrange(4, 12))]
    if rng.random() < 0.4:
        words.insert(rng.randrange(len(words)), str(rng.randrange(19)))
    return " ".join(words).capitalize() + rng.choice([".", "?", "!"])


def warmup_corpus(n: int, seed: int) -> list[str]:
    """Generic sentences plus "echo" conversations: the format and the words, not the tasks of data/."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        if i % 2:
            texts.append(_generic_sentence(rng) + " " + _generic_sentence(rng))
        else:
            said = _generic_sentence(rng)
            messages = []
            if rng.random() < 0.3:
                messages.append({"role": "system", "content": "You are a short and exact assistant."})
            messages += [
                {"role": "user", "content": f"Repeat after me: {said}"},
                {"role": "assistant", "content": said},
            ]
            texts.append(_render(messages))
    return texts


def _render(messages: list[dict[str, str]]) -> str:
    out = []
    for m in messages:
        out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    return "".join(out)


def build_tokenizer(corpus: list[str], vocab_size: int = 512):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def _training_text(corpus: list[str]) -> Iterator[str]:
    yield from corpus
    # Make sure every word and digit of the task data has its own tokens.
    yield " ".join(_WORDS)
    yield " ".join(str(i) for i in range(100))


def build(out: Path, *, warmup_steps: int = 300, seed: int = 0, quiet: bool = False) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.monotonic()
    torch.manual_seed(seed)
    corpus = warmup_corpus(2000, seed)
    tokenizer = build_tokenizer(corpus)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)

    # Pack the corpus into fixed blocks and train every parameter for a few hundred steps.
    ids: list[int] = []
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for text in corpus:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [end_of_text]
    block, batch = 64, 16
    data = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    gen = torch.Generator().manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / warmup_steps)
    )
    model.train()
    first = last = float("nan")
    for step in range(warmup_steps):
        rows = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        last = loss.item()
        if step == 0:
            first = last
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not quiet:
        params = sum(p.numel() for p in model.parameters())
        print(
            f"tiny model: {params} parameters, vocab {len(tokenizer)}, "
            f"warm-up loss {first:.2f} -> {last:.2f} in {warmup_steps} steps, "
            f"built in {time.monotonic() - started:.1f}s -> {out}",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning_trainer.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the model and tokenizer to")
    parser.add_argument("--warmup-steps", type=int, default=300, help="full-parameter warm-up steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    build(Path(args.out), warmup_steps=args.warmup_steps, seed=args.seed, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())

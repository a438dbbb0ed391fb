#!/usr/bin/env python3
"""Build a randomly initialised Llama of a realistic shape plus a local tokenizer and synthetic data files,
for throughput/memory benchmarks on a machine that cannot download anything (scripts/bench/trainer.py,
scripts/bench/gpu_qlora.sh).

    python scripts/bench/random_llama.py --out DIR [--shape 8b|8b-vocab|1b|tiny] [--layers N]
        [--rows 400] [--seq-len 512] [--variable-rows N] [--format text|completion] [--no-model]

Writes DIR/model (save_pretrained: bf16, or fp32 for the CPU shapes) and DIR/train.jsonl (`text` rows of
about --seq-len tokens); with --variable-rows N also DIR/train_variable.jsonl: N rows of 1/8 to 1x --seq-len
tokens (uniform), as `text` rows (every token trained) or, with --format completion, as prompt/completion
rows whose prompt is 25-75% of the row (the prompt is not trained on, as in instruction data).
Random weights are fine for speed and memory: every kernel runs exactly as for trained weights. The data is
deterministic (seed 0): the same command writes the same files.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.1-8B's dimensions (8.03B parameters): 32 layers, hidden 4096, GQA 32/8 heads, vocabulary 128256.
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    # Llama-3's 128k vocabulary on a few small layers: the output head and its logits dominate memory and
    # time, as they do for the loss of any 128k-vocabulary model (CPU-sized: 0.14B parameters).
    "8b-vocab": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    # TinyLlama-1.1B's shape: 22 layers, hidden 2048, GQA 32/4 heads, vocabulary 32000.
    "1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    ),
}
# Saved in fp32: shapes that only ever train on CPU (fp32 there), so that loading converts nothing.
FP32_SHAPES = ("tiny", "8b-vocab")


def model_config(shape: str, layers: int | None = None) -> dict[str, Any]:
    """The LlamaConfig fields of a shape (the vocabulary before it is widened to the tokenizer's)."""
    cfg = dict(SHAPES[shape])
    if layers:
        cfg["num_hidden_layers"] = layers
    return cfg


class Sentences:
    """Words of generic sentences with their token counts. The tokenizer's pre-tokenizer splits at spaces, so
    the tokens of " ".join(words) are exactly the sum of each " " + word's tokens: rows of a given length are
    assembled without re-tokenising them (and overshoot by one word at most)."""

    def __init__(self, tokenizer: Any, corpus: list[str]) -> None:
        text = " ".join(corpus)
        for special in ("<|im_start|>user", "<|im_start|>assistant", "<|im_start|>system", "<|im_end|>"):
            text = text.replace(special, " ")
        self.words = text.split()
        counts: dict[str, int] = {}
        for w in set(self.words):
            counts[w] = len(tokenizer(" " + w, add_special_tokens=False)["input_ids"])
        self.counts = counts

    def text(self, rng: random.Random, tokens: int) -> str:
        """Consecutive words of the corpus from a random start, about `tokens` tokens."""
        out: list[str] = []
        n = 0
        i = rng.randrange(len(self.words))
        while n < tokens:
            w = self.words[i % len(self.words)]
            out.append(w)
            n += self.counts[w]
            i += 1
        return " ".join(out)


def write_rows(
    path: Path, sentences: Sentences, rng: random.Random, rows: int, lo: int, hi: int, fmt: str
) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(rows):
            target = rng.randint(lo, hi)
            if fmt == "completion":
                prompt = max(1, round(target * rng.uniform(0.25, 0.75)))
                row = {
                    "prompt": sentences.text(rng, prompt) + "\n",
                    "completion": sentences.text(rng, max(1, target - prompt)),
                }
            else:
                row = {"text": sentences.text(rng, target)}
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    p.add_argument("--layers", type=int, default=None, help="fewer (or more) decoder layers than the shape's")
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument(
        "--variable-rows",
        type=int,
        default=0,
        help="also write DIR/train_variable.jsonl: this many rows of 1/8 to 1x --seq-len tokens (packing)",
    )
    p.add_argument("--format", choices=("text", "completion"), default="text", help="of train_variable.jsonl")
    p.add_argument("--no-model", action="store_true", help="only the tokenizer and the data")
    args = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from tuning_trainer.tiny import build_tokenizer, warmup_corpus

    hf_logging.disable_progress_bar()
    started = time.monotonic()
    out = Path(args.out)
    corpus = warmup_corpus(2000, seed=0)
    tokenizer = build_tokenizer(corpus)
    shape = model_config(args.shape, args.layers)
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    config = LlamaConfig(
        **shape,
        max_position_embeddings=max(4096, args.seq_len),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    params = 0
    if not args.no_model:
        torch.manual_seed(0)
        dtype = torch.float32 if args.shape in FP32_SHAPES else torch.bfloat16
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # initialised in the saved dtype: no fp32 copy of an 8B model
        try:
            with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
        model.save_pretrained(out / "model")
        params = sum(p.numel() for p in model.parameters())
        del model
    tokenizer.save_pretrained(out / "model")

    sentences = Sentences(tokenizer, corpus)
    rng = random.Random(0)
    # Rows long enough to fill --seq-len tokens (the trainer truncates to max_seq_length).
    write_rows(out / "train.jsonl", sentences, rng, args.rows, args.seq_len + 8, args.seq_len + 8, "text")
    # Rows of mixed lengths, as real chat/instruction data has: what padding costs and packing is for.
    if args.variable_rows:
        lo = max(2, args.seq_len // 8)
        write_rows(
            out / "train_variable.jsonl", sentences, rng, args.variable_rows, lo, args.seq_len, args.format
        )
    layers = f", {shape['num_hidden_layers']} layers" if args.layers else ""
    print(
        f"random {args.shape} Llama{layers}: {params / 1e9:.2f}B parameters, {args.rows} rows of >= "
        f"{args.seq_len} tokens, built in {time.monotonic() - started:.0f}s -> {out}",
        flush=True,
    )


if __name__ == "__main__":
    main()

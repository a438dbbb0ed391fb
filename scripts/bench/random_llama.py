#!/usr/bin/env python3
"""Build a randomly initialised Llama of a realistic shape plus a local tokenizer and a synthetic data file,
for throughput/memory benchmarks on a machine that cannot download anything (scripts/bench/gpu_qlora.sh).

    python scripts/bench/random_llama.py --out DIR [--shape 1b|tiny] [--rows 400] [--seq-len 512]
        [--variable-rows N]

Writes DIR/model (save_pretrained, bf16) and DIR/train.jsonl (`text` rows of about --seq-len tokens).
Random weights are fine for speed and memory: every kernel runs exactly as for trained weights.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

SHAPES = {
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument(
        "--variable-rows",
        type=int,
        default=0,
        help="also write DIR/train_variable.jsonl: this many rows of 1/8 to 1x --seq-len tokens (packing)",
    )
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
    shape = dict(SHAPES[args.shape])
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    config = LlamaConfig(
        **shape,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    params = sum(p.numel() for p in model.parameters())
    del model

    # Rows long enough to fill --seq-len tokens (the trainer truncates to max_seq_length).
    rng = random.Random(0)
    with open(out / "train.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(args.rows):
            words: list[str] = []
            while len(tokenizer(" ".join(words))["input_ids"]) < args.seq_len + 8:
                words += rng.choice(corpus).split()
            fh.write(json.dumps({"text": " ".join(words)}) + "\n")
    # Rows of mixed lengths, as real chat/instruction data has: what sequence packing is for.
    if args.variable_rows:
        with open(out / "train_variable.jsonl", "w", encoding="utf-8") as fh:
            for _ in range(args.variable_rows):
                target = rng.randint(max(1, args.seq_len // 8), args.seq_len)
                words = []
                while len(tokenizer(" ".join(words))["input_ids"]) < target:
                    words += rng.choice(corpus).split()[:8]
                fh.write(json.dumps({"text": " ".join(words)}) + "\n")
    print(
        f"random {args.shape} Llama: {params / 1e9:.2f}B parameters, {args.rows} rows of >= {args.seq_len} "
        f"tokens, built in {time.monotonic() - started:.0f}s -> {out}",
        flush=True,
    )


if __name__ == "__main__":
    main()

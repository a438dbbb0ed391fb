"""Merge a trained LoRA adapter into its base model and save a standalone 16-bit model.

    python -m tuning_trainer.merge --adapter OUT/adapter --out MERGED [--base MODEL] [--dtype bfloat16]

The base is the adapter's `base_model_name_or_path` unless --base is given (resolved like the trainer's
`model`: a directory, a name under $TUNING_MODELS_DIR, or a hub id). The base is loaded unquantised in the
chosen dtype, even for a QLoRA adapter: merging into 4-bit weights would round the update away. The result
loads with AutoModelForCausalLM.from_pretrained(MERGED) and needs no peft.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import EXIT_OK, EXIT_USER_ERROR, TrainerError, classify

DTYPES = ("bfloat16", "float16", "float32")


def merge(adapter: Path, out: Path, *, base: str | None = None, dtype: str = "bfloat16") -> Path:
    from .modelling import resolve_model

    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise TrainerError("adapter_not_found", f"no adapter_config.json in {adapter}", EXIT_USER_ERROR)
    adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    base_name = base or adapter_config.get("base_model_name_or_path")
    if not base_name:
        raise TrainerError(
            "model_not_found", "the adapter does not name its base model: pass --base", EXIT_USER_ERROR
        )
    source = resolve_model(base_name)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model: Any = AutoModelForCausalLM.from_pretrained(source.location, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(model, str(adapter))
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    # The adapter directory carries the tokenizer used in training (with any fallback chat template).
    tokenizer_from = adapter if (adapter / "tokenizer_config.json").is_file() else Path(source.location)
    AutoTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuning_trainer.merge", description="Merge a LoRA adapter into its base model."
    )
    parser.add_argument("--adapter", required=True, help="adapter directory (OUT/adapter or a checkpoint)")
    parser.add_argument("--out", required=True, help="where to write the merged model")
    parser.add_argument("--base", help="base model (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="dtype of the merged weights")
    args = parser.parse_args(argv)
    try:
        out = merge(Path(args.adapter), Path(args.out), base=args.base, dtype=args.dtype)
    except Exception as exc:
        err = classify(exc)
        print(f"error [{err.code}]: {err.message}", file=sys.stderr)
        return err.exit_code
    print(f"merged model written to {out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

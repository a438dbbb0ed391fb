#!/usr/bin/env bash
# QLoRA on a GPU: tokens/s and peak memory of the trainer vs a plain HF Trainer + peft, on a random-initialised
# 1B-class Llama (TinyLlama-1.1B shape) with a locally trained tokenizer, then the effect of sequence packing
# (our trainer with and without `packing`, on rows of mixed length). Nothing is downloaded.
#
#   scripts/bench/gpu_qlora.sh [--tiny] [--steps N] [--batch-size N] [--seq-len N] [--method qlora|lora]
#                              [--json PATH] [--python PY] [--launcher python|accelerate]
#   scripts/bench/gpu_qlora.sh --fetch-wheel     # on a machine with pip access, before lending a GPU
#
# The trainer runs as `python -m tuning_trainer` by default so that time to first step compares like for like
# with the baseline (`--launcher accelerate` adds the launcher's ~2 s).
# --tiny: the same pipeline with the tiny shape on whatever device is there (a CPU self-check, ~1 minute).
# bitsandbytes: used if importable; otherwise installed (--no-deps, into a scratch dir) from a wheel in
# .bench-wheels/ (carried to the device: `run(carry=[".bench-wheels"])`; see --fetch-wheel).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

shape=1b steps=30 batch=4 seq=512 method=qlora json="" py="" fetch=0 launcher=python
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) shape=tiny; steps=20; seq=64 ;;
    --steps) steps=$2; shift ;;
    --batch-size) batch=$2; shift ;;
    --seq-len) seq=$2; shift ;;
    --method) method=$2; shift ;;
    --json) json=$2; shift ;;
    --python) py=$2; shift ;;
    --launcher) launcher=$2; shift ;;
    --fetch-wheel) fetch=1 ;;
    -h|--help) sed -n "2,15p" "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=$(command -v python3); fi
fi

if [ "$fetch" = 1 ]; then
  version=$("$py" -c 'import importlib.metadata as m; print(m.version("bitsandbytes"))')
  mkdir -p .bench-wheels
  "$py" -m pip download --no-deps --only-binary=:all: --platform manylinux_2_24_x86_64 \
    --python-version 3 -d .bench-wheels "bitsandbytes==$version"
  ls -la .bench-wheels
  exit 0
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
work=$(mktemp -d /tmp/gpu-qlora.XXXXXX)
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$ROOT/trainer:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if ! "$py" -c 'import bitsandbytes' >/dev/null 2>&1; then
  wheel=$(ls .bench-wheels/bitsandbytes-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "bitsandbytes is not installed and no wheel in .bench-wheels/ (run: $0 --fetch-wheel)" >&2
    exit 2
  fi
  "$py" -m pip install --quiet --no-deps --no-index --target "$work/site" "$wheel"
  export PYTHONPATH="$work/site:$PYTHONPATH"
fi

"$py" - <<'PY'
import torch, transformers, peft, accelerate, bitsandbytes
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"# torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"accelerate {accelerate.__version__}, bitsandbytes {bitsandbytes.__version__}; device: {dev}")
PY

"$py" scripts/bench/random_llama.py --out "$work/data" --shape "$shape" --seq-len "$seq" \
  --rows $((steps * batch + batch)) --variable-rows $((4 * (steps * batch + batch)))
args=(--model "$work/data/model" --training-file "$work/data/train.jsonl" --method "$method"
      --steps "$steps" --batch-size "$batch" --max-seq-length "$seq" --python "$py" --baseline
      --launcher "$launcher")
if [ -n "$json" ]; then args+=(--json "$json"); fi
"$py" scripts/bench/trainer.py "${args[@]}"

# Sequence packing: our trainer without and with `packing` on rows of 1/8 to 1x the sequence length (it
# exits non-zero if packing does not raise the real tokens per step).
packing=(--model "$work/data/model" --training-file "$work/data/train_variable.jsonl" --method "$method"
         --steps "$steps" --batch-size "$batch" --max-seq-length "$seq" --python "$py" --launcher "$launcher"
         --compare-packing)
if [ -n "$json" ]; then packing+=(--json "${json%.json}-packing.json"); fi
"$py" scripts/bench/trainer.py "${packing[@]}"
echo "# gpu_qlora.sh: all runs completed (shape=$shape method=$method steps=$steps batch=$batch seq=$seq)"

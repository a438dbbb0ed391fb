#!/usr/bin/env bash
# GPU benchmark, version 2: our trainer against HF Trainer + peft on a random-initialised Llama with
# Llama-3.1-8B's dimensions (hidden 4096, intermediate 14336, 32 layers, 32/8 heads, vocabulary 128256) and a
# locally trained tokenizer: bf16 LoRA and QLoRA, each with packing on (HF: DataCollatorWithFlattening) and
# off (HF: padding), both sides on the same attention kernel (what our trainer resolves: sdpa without
# flash-attn) and on exactly the same micro-batches (scripts/bench/trainer.py). Reports tokens/s, MFU
# (docs/benchmarks.md), peak memory and time to first step, as a table and JSON. Nothing is downloaded.
#
#   scripts/bench/gpu_qlora.sh [--tiny] [--layers N] [--steps N] [--methods "lora qlora"] [--packing "on off"]
#       [--seq-len N] [--max-tokens N] [--batch-size N] [--rows N] [--json PATH] [--python PY]
#       [--peak-tflops X] [--deadline SECONDS] [--work DIR] [--dry-run]
#   scripts/bench/gpu_qlora.sh --fetch-wheel     # on a machine with pip access, before lending a GPU
#
# --tiny: the same pipeline with the tiny shape on whatever device is there (the CPU self-check, ~2 minutes).
# --layers N: fewer decoder layers than 32, only when the time needs it (the output says so; MFU is then not
# judged). --deadline: no combination starts when the last one would end past this many seconds (default 540
# on a GPU: the whole script must fit 12 minutes on one H200, set-up included, and a lent machine runs one
# command for 10 minutes at most); skipped ones are named. --work DIR: keep the model and data there and reuse
# them (e.g. `--methods lora` then `--methods qlora` as two commands on the same machine).
# bitsandbytes: used if importable; otherwise installed (--no-deps, into a scratch dir) from a wheel in
# .bench-wheels/ (carried to the device: `run(carry=[".bench-wheels"])`; see --fetch-wheel).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
t_start=$(date +%s)

shape=8b layers="" steps=10 warmup=2 seq=2048 max_tokens=8192 batch=4 rows=400 methods="lora qlora"
packings="on off" json="" py="" fetch=0 peak="" deadline="" dry=0 keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) shape=tiny; steps=6; warmup=1; seq=256; max_tokens=1024; batch=4; rows=200 ;;
    --layers) layers=$2; shift ;;
    --steps) steps=$2; shift ;;
    --warmup-steps) warmup=$2; shift ;;
    --seq-len) seq=$2; shift ;;
    --max-tokens) max_tokens=$2; shift ;;
    --batch-size) batch=$2; shift ;;
    --rows) rows=$2; shift ;;
    --methods) methods=$2; shift ;;
    --packing) packings=$2; shift ;;
    --json) json=$2; shift ;;
    --python) py=$2; shift ;;
    --peak-tflops) peak=$2; shift ;;
    --deadline) deadline=$2; shift ;;
    --work) keep=$2; shift ;;
    --dry-run) dry=1 ;;
    --fetch-wheel) fetch=1 ;;
    -h|--help) sed -n "2,23p" "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for m in $methods; do
  case "$m" in lora|qlora) ;; *) echo "--methods: lora and/or qlora, not $m" >&2; exit 2 ;; esac
done
for p in $packings; do
  case "$p" in on|off) ;; *) echo "--packing: on and/or off, not $p" >&2; exit 2 ;; esac
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

full_8b=0 note=""
if [ "$shape" = 8b ]; then
  if [ -z "$layers" ] || [ "$layers" = 32 ]; then
    full_8b=1 note="Llama-3.1-8B dimensions, all 32 layers"
  else
    note="Llama-3.1-8B dimensions with $layers of 32 layers (--layers: fewer for time): MFU not judged"
  fi
  [ -n "$deadline" ] || deadline=540
else
  note="$shape shape (a self-check: no figure means anything)"
fi

layer_args=()
if [ -n "$layers" ]; then layer_args=(--layers "$layers"); fi
peak_args=()
if [ -n "$peak" ]; then peak_args=(--peak-tflops "$peak"); fi
combos=()
for m in $methods; do for p in $packings; do combos+=("$m:$p"); done; done

if [ "$dry" = 1 ]; then
  echo "# dry run: shape=$shape layers=${layers:-default} steps=$steps warmup=$warmup seq=$seq max_tokens=$max_tokens batch=$batch rows=$rows deadline=${deadline:-none}"
  echo "# $note"
  echo "random_llama.py --shape $shape ${layer_args[*]} --seq-len $seq --variable-rows $rows --format completion"
  for c in "${combos[@]}"; do
    m=${c%%:*} p=${c##*:}
    if [ "$p" = on ]; then side=hf_flat; else side=hf; fi
    echo "trainer.py --method $m --packing $p --sides ours,$side --steps $steps --warmup-steps $warmup"
  done
  exit 0
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -n "$keep" ]; then
  mkdir -p "$keep"; work=$(cd "$keep" && pwd)
else
  work=$(mktemp -d /tmp/gpu-qlora.XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi
export PYTHONPATH="$ROOT/trainer:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if ! "$py" -c 'import bitsandbytes' >/dev/null 2>&1; then
  wheel=$(ls .bench-wheels/bitsandbytes-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "bitsandbytes is not installed and no wheel in .bench-wheels/ (run: $0 --fetch-wheel)" >&2
    exit 2
  fi
  "$py" -m pip install --quiet --no-deps --no-index --upgrade --target "$work/site" "$wheel"
  export PYTHONPATH="$work/site:$PYTHONPATH"
fi

"$py" - <<'PY' 2>&1 | grep -v "gemm_4bit_forward"
import importlib.util, torch, transformers, peft, accelerate, bitsandbytes
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
fa = "flash-attn installed" if importlib.util.find_spec("flash_attn") else "no flash-attn"
print(f"# torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"accelerate {accelerate.__version__}, bitsandbytes {bitsandbytes.__version__}; device: {dev}; {fa}")
PY
echo "# $note"

t_build=$(date +%s)
built="$work/data/built-$shape-${layers:-all}-$seq-$rows"
if [ -f "$built" ]; then
  echo "# reusing the model and data in $work/data"
else
  rm -rf "$work/data"
  "$py" scripts/bench/random_llama.py --out "$work/data" --shape "$shape" "${layer_args[@]}" --rows 1 \
    --seq-len "$seq" --variable-rows "$rows" --format completion
  touch "$built"
  echo "# model and data built in $(( $(date +%s) - t_build ))s"
fi
setup=$(( $(date +%s) - t_start ))

outs=() skipped=() failed=() last=0
for c in "${combos[@]}"; do
  m=${c%%:*} p=${c##*:}
  elapsed=$(( $(date +%s) - t_start ))
  if [ -n "$deadline" ] && [ $(( elapsed + last )) -gt "$deadline" ]; then
    skipped+=("$m/packing-$p")
    echo "# skipped $m packing=$p: ${elapsed}s gone, the last combination took ${last}s, deadline ${deadline}s"
    continue
  fi
  if [ "$p" = on ]; then side=hf_flat; else side=hf; fi
  t_combo=$(date +%s)
  # A combination that fails (e.g. one side out of memory) is reported, and the others still run.
  if "$py" scripts/bench/trainer.py --model "$work/data/model" --training-file "$work/data/train_variable.jsonl" \
    --shape "$shape" --method "$m" --packing "$p" --sides "ours,$side" --rounds 1 --steps "$steps" \
    --warmup-steps "$warmup" --max-seq-length "$seq" --max-tokens-per-batch "$max_tokens" \
    --batch-size "$batch" "${peak_args[@]}" --label "$m packing=$p" --work "$work/run-$m-$p" \
    --json "$work/run-$m-$p.json"; then
    outs+=("$work/run-$m-$p.json")
  else
    failed+=("$m/packing-$p")
    echo "# FAILED: $m packing=$p (the error is above; an out-of-memory side names itself there)"
  fi
  last=$(( $(date +%s) - t_combo ))
done
if [ ${#skipped[@]} -gt 0 ]; then note="$note; skipped for time: ${skipped[*]}"; fi
if [ ${#failed[@]} -gt 0 ]; then note="$note; FAILED: ${failed[*]}"; fi

report=(--note "$note" --setup-seconds "$setup")
if [ "$full_8b" = 1 ]; then report+=(--full-8b); fi
if [ -n "$json" ]; then report+=(--out "$json"); fi
ran=${#outs[@]}
if [ -n "$keep" ]; then
  # A kept folder: report every combination run there, by this command or an earlier one.
  outs=()
  for f in "$work"/run-*.json; do [ -f "$f" ] && outs+=("$f"); done
fi
if [ ${#outs[@]} -gt 0 ]; then "$py" scripts/bench/gpu_report.py "${report[@]}" "${outs[@]}"; fi
echo "# gpu_qlora.sh: $(( $(date +%s) - t_start ))s in all (shape=$shape steps=$steps seq=$seq max_tokens=$max_tokens batch=$batch); $ran of ${#combos[@]} combinations ran, ${#outs[@]} reported"
if [ "$ran" -eq 0 ] || [ ${#failed[@]} -gt 0 ]; then exit 1; fi

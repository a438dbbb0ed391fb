#!/usr/bin/env python3
"""One table and one JSON from scripts/bench/gpu_qlora.sh's runs of trainer.py (one JSON per method and
packing setting): tokens/s, MFU, peak memory and time to first step of ours and of the HF baseline, the
ratios, and the GPU targets (docs/benchmarks.md, "GPU"): tokens/s >= 1.5x HF, peak memory <= 0.8x HF, and
MFU >= 40% for bf16 LoRA at Llama-3.1-8B's dimensions (all 32 layers).

    python scripts/bench/gpu_report.py --out PATH.json [--full-8b] RUN.json...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Row, machine, table

SPEEDUP = 1.5
MEMORY = 0.8
MFU = 0.40


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", help="write the combined JSON here")
    p.add_argument("--full-8b", action="store_true", help="the model has all of Llama-3.1-8B's layers")
    p.add_argument("--note", default="", help="a line for the output (e.g. fewer layers, and why)")
    p.add_argument("--setup-seconds", type=float, help="set-up before the first run (wheels, model build)")
    args = p.parse_args()

    combos: list[dict[str, Any]] = []
    for path in args.runs:
        data = json.loads(Path(path).read_text())
        cfg = data["config"]
        base = cfg["sides"][1]
        ours = data["runs"]["ours"][0]
        hf = data["runs"][base][0]
        combos.append(
            {
                "method": cfg["method"],
                "packing": cfg["packing"],
                "baseline": base,
                "ours": _figures(ours),
                "hf": _figures(hf),
                "tokens_per_second_ratio": ours["tokens_per_s"]["input"] / hf["tokens_per_s"]["input"],
                "peak_memory_ratio": ours["peak_memory_mb"] / hf["peak_memory_mb"],
                "first_loss_check": data["first_loss_check"][base],
                "plan": data["plan"],
                "device": ours["device"],
                "source": str(path),
            }
        )

    head = ["method", "packing", "HF side", "tok/s ours", "tok/s HF", "ratio", "MFU ours", "MFU HF"]
    head += ["peak GiB ours", "peak GiB HF", "ratio", "1st step s ours", "1st step s HF", "1st loss equal"]
    body = []
    for c in combos:
        o, h = c["ours"], c["hf"]
        body.append(
            [
                c["method"],
                c["packing"],
                "flattening" if c["baseline"] == "hf_flat" else "padding",
                f"{o['tokens_per_s']:,.0f}",
                f"{h['tokens_per_s']:,.0f}",
                f"{c['tokens_per_second_ratio']:.2f}",
                _pct(o["mfu"]),
                _pct(h["mfu"]),
                f"{o['peak_memory_mb'] / 1024:.1f}",
                f"{h['peak_memory_mb'] / 1024:.1f}",
                f"{c['peak_memory_ratio']:.2f}",
                f"{o['time_to_first_step_s']:.1f}",
                f"{h['time_to_first_step_s']:.1f}",
                "yes" if c["first_loss_check"]["equal"] else "NO",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))

    rows: list[Row] = []
    for c in combos:
        tag = f"{c['method']}, packing {c['packing']}"
        rows.append(
            Row(
                f"G1 {tag}",
                "tokens/s ours ÷ HF + peft (same attention, same batches)",
                c["tokens_per_second_ratio"],
                "x",
                None,
                "",
                ">=",
                SPEEDUP,
                "value",
            )
        )
        rows.append(
            Row(
                f"G2 {tag}",
                "peak memory ours ÷ HF + peft",
                c["peak_memory_ratio"],
                "x",
                None,
                "",
                "<=",
                MEMORY,
                "value",
            )
        )
        if c["method"] == "lora" and args.full_8b and c["ours"]["mfu"] is not None:
            rows.append(
                Row(
                    f"G3 {tag}",
                    "MFU ours, bf16 LoRA at Llama-3.1-8B dimensions",
                    c["ours"]["mfu"],
                    "",
                    None,
                    "",
                    ">=",
                    MFU,
                    "value",
                )
            )

    device = combos[0]["device"] if combos else "?"
    print(f"# gpu_qlora.sh v2: {device}; {args.note}".rstrip("; "))
    if args.setup_seconds is not None:
        print(f"# set-up before the first run: {args.setup_seconds:.0f}s")
    print("\n".join(lines))
    print(table(rows))
    if not args.full_8b:
        print("# MFU target (G3) not judged: the model is not the full 32-layer 8B shape")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {
                    "bench": "gpu_qlora",
                    "version": 2,
                    "machine": machine(),
                    "note": args.note,
                    "setup_seconds": args.setup_seconds,
                    "full_8b": args.full_8b,
                    "results": [r.as_json() for r in rows],
                    "combinations": combos,
                },
                indent=2,
            )
            + "\n"
        )


def _figures(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "tokens_per_s": run["tokens_per_s"]["input"],
        "trained_tokens_per_s": run["tokens_per_s"]["trained"],
        "slot_tokens_per_s": run["tokens_per_s"]["slots"],
        "padding_efficiency": run["padding_efficiency"],
        "mfu": run["mfu"],
        "model_tflops_per_s": run["model_tflops_per_s"],
        "peak_memory_mb": run["peak_memory_mb"],
        "time_to_first_step_s": run["time_to_first_step_s"],
        "first_loss": run["first_loss"],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


if __name__ == "__main__":
    main()

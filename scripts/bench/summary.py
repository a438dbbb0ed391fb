#!/usr/bin/env python3
"""One table of every figure in a bench-results folder (the JSON files written by scripts/bench/all).

python scripts/bench/summary.py bench-results [--markdown]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt(x: object) -> str:
    if not isinstance(x, (int, float)):
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (for docs/benchmarks.md)")
    args = p.parse_args()
    rows = []
    for path in sorted(Path(args.folder).glob("*.json")):
        data = json.loads(path.read_text())
        for r in data.get("results", []) if isinstance(data.get("results"), list) else []:
            rows.append(
                [
                    r["id"],
                    r["what"],
                    f"{fmt(r['value'])} {r['unit']}",
                    fmt(r["baseline"]),
                    fmt(r["ratio"]),
                    r["target_text"],
                    "PASS" if r["pass"] else "MISS",
                ]
            )
    rows.sort(key=lambda r: r[0])
    head = ["id", "what", "value", "baseline", "ratio", "target", "result"]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    for line in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()

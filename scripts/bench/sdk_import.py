#!/usr/bin/env python3
"""B5: wall time of `python -c "import tuning_sdk"` against `python -c "import openai"`.

    python scripts/bench/sdk_import.py [--runs 15] [--json PATH] [--quick]

Each command runs --runs times as a fresh interpreter, interleaved (sdk, openai, bare `pass`), after one
unmeasured run of each (warm file cache); the medians are compared. Target: tuning_sdk <= 0.2x openai.
The bare interpreter (`python -c pass`) is reported too: it is a floor neither can go below. The details
also list the slowest imports of tuning_sdk (`python -X importtime`).

B5h holds the SDK to the same target with everything its first `client.tunings` call loads: the SDK imports
urllib3 with its first request (tuning_sdk/_http.py) and each resource with its first use (_client.py), so
B5 is what `import tuning_sdk`, the CLI's --help or a webhook receiver pays, and B5h what a program that
talks to the service pays before its first byte goes out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from _common import Row, finish, median, parser

CODE = {
    "tuning_sdk": "import tuning_sdk",
    "tuning_sdk_http": "import tuning_sdk, urllib3; tuning_sdk.TuningClient(api_key='k').tunings",
    "openai": "import openai",
    "bare": "pass",
}


def env() -> dict[str, str]:
    # No coverage start-up hook (scripts/test sets one) and no user site: time the imports alone. Bytecode
    # may be written: pip compiled openai's (and urllib3's) at install, and an editable tuning_sdk under
    # PYTHONDONTWRITEBYTECODE=1 (set on some machines) would be compiled from source on every run instead
    # (a quarter of its import time, measured); the unmeasured warm-up run writes it.
    skip = ("COVERAGE_", "PYTHONDONTWRITEBYTECODE")
    e = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    e["PYTHONNOUSERSITE"] = "1"
    return e


def wall(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env())
    return time.perf_counter() - t0


def importtime_top(module: str, n: int = 8) -> list[dict[str, object]]:
    """The slowest imports (cumulative microseconds) under `import module`."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env=env(),
    ).stderr
    rows = []
    for line in out.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append({"module": m.group(4), "self_us": int(m.group(1)), "cumulative_us": int(m.group(2))})
    rows.sort(key=lambda r: -int(str(r["cumulative_us"])))
    return rows[:n]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args()
    if args.quick:
        args.runs = 1
    times: dict[str, list[float]] = {k: [] for k in CODE}
    if not args.quick:
        for code in CODE.values():
            wall(code)  # warm the file cache
    for _ in range(args.runs):
        for name, code in CODE.items():
            times[name].append(wall(code))
    med = {k: 1000 * median(v) for k, v in times.items()}
    rows = [
        Row(
            "B5",
            'python -c "import tuning_sdk" wall time',
            med["tuning_sdk"],
            "ms",
            med["openai"],
            'python -c "import openai"',
            "<=",
            0.2,
        ),
        Row(
            "B5h",
            "the same + urllib3 + the tunings resource (a first request's imports)",
            med["tuning_sdk_http"],
            "ms",
            med["openai"],
            'python -c "import openai"',
            "<=",
            0.2,
        ),
    ]
    details = {
        "runs": args.runs,
        "median_ms": {k: round(v, 1) for k, v in med.items()},
        "all_ms": {k: [round(1000 * t, 1) for t in v] for k, v in times.items()},
        "import_only_ms": {
            "tuning_sdk": round(med["tuning_sdk"] - med["bare"], 1),
            "tuning_sdk_http": round(med["tuning_sdk_http"] - med["bare"], 1),
            "openai": round(med["openai"] - med["bare"], 1),
        },
        "tuning_sdk_slowest_imports": importtime_top("tuning_sdk"),
    }
    finish("sdk_import", rows, args, details)
    print(
        f"# bare interpreter {med['bare']:.1f} ms; imports alone: tuning_sdk "
        f"{details['import_only_ms']['tuning_sdk']} ms (with urllib3 "
        f"{details['import_only_ms']['tuning_sdk_http']} ms), openai {details['import_only_ms']['openai']} ms"
    )


if __name__ == "__main__":
    main()

"""Shared plumbing of the service/SDK benchmarks (B1-B7, docs/benchmarks.md).

Every figure is a ratio against a baseline measured in the same run: these machines are noisy, absolute times
mean little. Each script prints a table (value, baseline, ratio, target, PASS/MISS) and writes JSON with
--json. Services run as real subprocesses (`python -m tuning_service`, i.e. uvicorn) on a free loopback port,
started with tests/support/server.py; load comes from another process.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.server import (  # noqa: E402
    DEV_KEY,
    ServiceProcess,
    make_light_files_root,
    start_service,
)

__all__ = [
    "DEV_KEY",
    "FAKE_TRAINER",
    "ROOT",
    "Row",
    "ServiceProcess",
    "bench_service",
    "finish",
    "machine",
    "parser",
    "percentile",
]

FAKE_TRAINER = ROOT / "tests" / "service" / "fake_trainer.py"

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
}


@dataclass
class Row:
    """One benchmark figure. `compare` is what the target applies to: the ratio (value / baseline) or the
    value itself (when the issue gives an absolute target)."""

    id: str
    what: str
    value: float
    unit: str
    baseline: float | None
    baseline_what: str
    target_op: str  # "<=" or ">="
    target: float
    compare: str = "ratio"  # "ratio" | "value"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool:
        got = self.ratio if self.compare == "ratio" else self.value
        if got is None or math.isnan(got):
            return False
        return _OPS[self.target_op](got, self.target)

    def target_text(self) -> str:
        what = "ratio" if self.compare == "ratio" else self.unit
        return f"{self.target_op} {self.target:g} {what}".replace("<=", "≤").replace(">=", "≥")

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        d["target_text"] = self.target_text()
        d["pass"] = self.passed
        return d


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3f}"


def table(rows: Sequence[Row]) -> str:
    head = ["id", "what", "value", "unit", "baseline", "ratio", "target", "result"]
    body = [
        [
            r.id,
            r.what,
            _fmt(r.value),
            r.unit,
            _fmt(r.baseline),
            _fmt(r.ratio),
            r.target_text(),
            "PASS" if r.passed else "MISS",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quick", action="store_true", help="tiny counts (a smoke test, not a measurement)")
    return p


def finish(name: str, rows: Sequence[Row], args: argparse.Namespace, details: dict[str, Any]) -> None:
    """Print the table and write the JSON."""
    command = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    info = machine()
    print(f"# {name}: {command}")
    print(f"# host={info['host']} cpus={info['cpus']} load={info['loadavg_1_5_15']}")
    print(table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "bench": name,
                    "command": command,
                    "quick": bool(getattr(args, "quick", False)),
                    "machine": info,
                    "results": [r.as_json() for r in rows],
                    "details": details,
                },
                indent=2,
            )
            + "\n"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_service(
    name: str, *, extra_env: dict[str, str] | None = None, fake_trainer: bool = False
) -> ServiceProcess:
    """A real service on a free port with its own scratch data dir and a light files root. The per-key rate
    limit is off (a benchmark drives one key far beyond it on purpose) unless extra_env sets it."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    files_root = make_light_files_root(root / "files")
    env = {"TUNING_RATE_LIMIT_RPS": "0"}
    if fake_trainer:
        env["TUNING_TRAINER_COMMAND"] = json.dumps([sys.executable, str(FAKE_TRAINER)])
    env.update(extra_env or {})
    return start_service(
        data_dir=root / "data", files_root=files_root, models_dir=root / "models", extra_env=env
    )

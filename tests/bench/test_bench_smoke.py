"""The benchmarks (scripts/bench, docs/benchmarks.md) run end to end with tiny counts and write the JSON the
docs and `scripts/bench/summary.py` read. No timing is asserted: figures are for the benchmark runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench"

# script -> extra arguments (B3 trains a real model for minutes: not in a smoke test; B6 is covered).
SCRIPTS = {
    "api": ["--engine", "python"],  # the fallback load generator (wrk may not be installed)
    "stream_latency": [],
    "sdk_import": [],
    "validation": [],
    "memory": [],
    "job_overhead": ["--skip-b3"],
}
EXPECTED_IDS = {
    "api": ["B1", "B2", "B1b", "B2b"],
    "stream_latency": ["B4", "B4"],
    "sdk_import": ["B5", "B5h"],
    "validation": ["B8a", "B8b", "B8c", "B8d"],
    "memory": ["B7"],
    "job_overhead": ["B6", "B6"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Run every script at once (they share nothing but the CPUs) and load their JSON."""
    out = tmp_path_factory.mktemp("bench")
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(BENCH / f"{name}.py"),
                "--quick",
                "--json",
                str(out / f"{name}.json"),
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in SCRIPTS.items()
    }
    outputs = {name: p.communicate(timeout=240)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name} exited {p.returncode}:\n{outputs[name][-3000:]}"
        assert "PASS" in outputs[name] or "MISS" in outputs[name], outputs[name]  # the table was printed
    summary = subprocess.run(
        [sys.executable, str(BENCH / "summary.py"), str(out)], capture_output=True, text=True, check=True
    )
    assert all(i in summary.stdout for ids in EXPECTED_IDS.values() for i in ids), summary.stdout
    return {name: json.loads((out / f"{name}.json").read_text()) for name in SCRIPTS}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_json_shape(results: dict[str, dict], name: str) -> None:
    data = results[name]
    assert data["bench"] == name and data["quick"] is True
    assert data["machine"]["cpus"] >= 1 and len(data["machine"]["loadavg_1_5_15"]) == 3
    assert [r["id"] for r in data["results"]] == EXPECTED_IDS[name]
    for r in data["results"]:
        assert isinstance(r["value"], (int, float)) and r["value"] == r["value"]  # a number, not NaN
        assert r["target_op"] in ("<=", ">=") and isinstance(r["pass"], bool)
        if r["compare"] == "ratio":
            assert r["baseline"] > 0 and r["ratio"] == pytest.approx(r["value"] / r["baseline"], rel=1e-3)
    assert isinstance(data["details"], dict) and data["details"]


def test_api_measured_both_servers(results: dict[str, dict]) -> None:
    runs = results["api"]["details"]["runs"]
    assert results["api"]["details"]["engine"] == "python"
    for kind in ("bare", "get", "list"):
        assert runs[kind] and all(r["requests"] > 0 and r["errors"] == 0 for r in runs[kind])


def test_stream_and_memory_saw_live_records(results: dict[str, dict]) -> None:
    assert results["stream_latency"]["details"]["records_measured"] > 0
    assert results["memory"]["details"]["events_per_stream"]["min"] > 0
    assert results["memory"]["details"]["jobs_running_at_end"] == 2

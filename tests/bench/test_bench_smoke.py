"""The benchmarks (scripts/bench, docs/benchmarks.md) run end to end with tiny counts and write the JSON the
docs and `scripts/bench/summary.py` read. No timing is asserted: figures are for the benchmark runs.

The trainer benchmark trains for real (our trainer and both HF baselines, a few steps of a tiny random Llama),
and so does one combination of the GPU script's CPU self-check (`gpu_qlora.sh --tiny`: QLoRA, no packing);
the GPU script's full grid is checked as a dry run. The inference benchmark trains two tiny fine-tunes through
a real service and starts its inference worker: test_bench_inference.py, a module of its own, so that the
two run on different test workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The fixture trains for real (the trainer benchmark, the GPU self-check): more than the default 300 s when
# the machine is busy.
pytestmark = pytest.mark.timeout(600)

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
    "trainer": ["--baseline"],  # our trainer, HF Trainer + peft padded and flattened, one round
}
EXPECTED_IDS = {
    "api": ["B1", "B2", "B1b", "B2b"],
    "stream_latency": ["B4", "B4"],
    "sdk_import": ["B5", "B5h"],
    "validation": ["B8a", "B8b", "B8c", "B8d"],
    "memory": ["B7"],
    "job_overhead": ["B6", "B6"],
    "trainer": ["T1", "T2", "L-hf", "L-hf_flat"],
    "inference": ["I1", "I1f"],
}
# The GPU script's CPU self-check, one combination of its grid (the whole --tiny grid takes ~2 minutes).
GPU_ARGS = ["--tiny", "--methods", "qlora", "--packing", "off", "--steps", "4"]
GPU_IDS = ["G1 qlora, packing off", "G2 qlora, packing off"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Run every script at once (they share nothing but the CPUs) and load their JSON."""
    out = tmp_path_factory.mktemp("bench")
    gpu = subprocess.Popen(
        [
            "bash",
            str(BENCH / "gpu_qlora.sh"),
            *GPU_ARGS,
            "--python",
            sys.executable,
            "--json",
            str(out / "gpu.json"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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
    procs["gpu_qlora"] = gpu
    outputs = {name: p.communicate(timeout=420)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name} exited {p.returncode}:\n{outputs[name][-3000:]}"
        assert "PASS" in outputs[name] or "MISS" in outputs[name], outputs[name]  # the table was printed
    summary = subprocess.run(
        [sys.executable, str(BENCH / "summary.py"), str(out)], capture_output=True, text=True, check=True
    )
    # (inference runs in its own fixture, inference_results)
    assert all(i in summary.stdout for name in SCRIPTS for i in EXPECTED_IDS[name]), summary.stdout
    assert all(i in summary.stdout for i in GPU_IDS), summary.stdout
    loaded = {name: json.loads((out / f"{name}.json").read_text()) for name in SCRIPTS}
    return {**loaded, "gpu_qlora": json.loads((out / "gpu.json").read_text())}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_json_shape(results: dict[str, dict], name: str) -> None:
    check_shape(results[name], name)


def check_shape(data: dict, name: str) -> None:
    """What every benchmark's JSON holds (scripts/bench/_common.py)."""
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


def test_trainer_same_batches_both_sides(results: dict[str, dict]) -> None:
    """The trainer benchmark: the three sides trained the same micro-batches (equal first losses, every step's
    tokens checked by the script) and each run reports tokens/s three ways, padding efficiency and peak
    memory; the ratios the issue names are there."""
    data = results["trainer"]
    assert data["config"]["sides"] == ["ours", "hf", "hf_flat"]
    for key in ("tokens_per_second_ratio", "peak_memory_ratio", "tokens_per_second_ratio_flat"):
        assert isinstance(data[key], float) and data[key] > 0, key
    assert all(check["equal"] for check in data["first_loss_check"].values())
    for side, runs in data["runs"].items():
        (run,) = runs
        assert set(run["tokens_per_s"]) == {"input", "trained", "slots"}, side
        assert (
            run["tokens_per_s"]["slots"] >= run["tokens_per_s"]["input"] >= run["tokens_per_s"]["trained"] > 0
        )
        assert 0 < run["padding_efficiency"] <= 1 and run["peak_memory_mb"] > 0
        assert run["time_to_first_step_s"] >= run["setup_s"] > 0
    assert data["runs"]["hf_flat"][0]["padding_efficiency"] == 1.0  # flattening pads nothing
    assert data["ratios"]["hf"]["per_round"]["tokens_per_second"]  # every round's ratio, not only a median


def test_gpu_script_self_check(results: dict[str, dict]) -> None:
    data = results["gpu_qlora"]
    assert data["bench"] == "gpu_qlora" and data["version"] == 2 and data["full_8b"] is False
    (combo,) = data["combinations"]
    assert (combo["method"], combo["packing"], combo["baseline"]) == ("qlora", "off", "hf")
    assert combo["first_loss_check"]["equal"]
    for side in ("ours", "hf"):
        figures = combo[side]
        assert figures["tokens_per_s"] > 0 and figures["peak_memory_mb"] > 0
        assert figures["time_to_first_step_s"] > 0 and "mfu" in figures
    assert [r["id"] for r in data["results"]] == GPU_IDS


def test_gpu_script_full_grid_dry_run() -> None:
    """The default (8B) grid parses: both methods, packing on (HF flattening) and off (HF padding)."""
    out = subprocess.run(
        ["bash", str(BENCH / "gpu_qlora.sh"), "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "all 32 layers" in out and "--shape 8b" in out
    for method in ("lora", "qlora"):
        assert f"--method {method} --packing on --sides ours,hf_flat" in out
        assert f"--method {method} --packing off --sides ours,hf" in out

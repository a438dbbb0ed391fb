"""scripts/bench/inference.py --quick end to end (see test_bench_smoke.py): its own module, so that it runs
beside the other benchmarks' fixture on another test worker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.bench.test_bench_smoke import BENCH, EXPECTED_IDS, ROOT, check_shape

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def inference_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """scripts/bench/inference.py --quick (tiny model, 2 rounds: about a minute, more on a busy machine)."""
    out = tmp_path_factory.mktemp("bench-inference")
    run = subprocess.run(
        [sys.executable, str(BENCH / "inference.py"), "--quick", "--json", str(out / "inference.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert run.returncode == 0, f"inference exited {run.returncode}:\n{(run.stdout + run.stderr)[-3000:]}"
    assert "PASS" in run.stdout or "MISS" in run.stdout, run.stdout
    summary = subprocess.run(
        [sys.executable, str(BENCH / "summary.py"), str(out)], capture_output=True, text=True, check=True
    )
    assert all(i in summary.stdout for i in EXPECTED_IDS["inference"]), summary.stdout
    return dict(json.loads((out / "inference.json").read_text()))


def test_json_shape(inference_results: dict) -> None:
    check_shape(inference_results, "inference")


def test_inference_measured_every_side(inference_results: dict) -> None:
    """The inference benchmark: interleaved rounds on both sides for each figure, the same greedy text, every
    decode run as long as asked (no early EOS), the worker's own switch and load figures."""
    d = inference_results["details"]
    rounds = d["config"]["rounds"]
    assert d["config"]["shape"] == "tiny" and rounds == 2 and len(d["config"]["fine_tunes"]) == 2
    for key in ("ttft_base_s", "ttft_fine_tune_s"):
        for side in ("api", "worker", "direct", "forward"):
            values = d[key][side]
            assert len(values) == rounds and all(v > 0 for v in values), (key, side)
    cpu = d["ttft_base_s"]["cpu_ms_per_request"]
    assert cpu["direct"]["bench"] > 0 and cpu["api"]["service"] >= 0 and cpu["api"]["worker"] >= 0
    assert all(d["same_greedy_text"])  # the same model and prompt ids: the same tokens on both sides
    for side in ("api", "direct"):
        assert [r["tokens"] for r in d["decode"][side]] == [d["config"]["max_tokens"]] * rounds, side
        assert all(r["tokens_per_s"] > 0 for r in d["decode"][side])
    assert len(d["ratios_per_round"]["ttft_base"]) == rounds and len(d["ratios_per_round"]["cold"]) == 1
    sw = d["switch"]
    assert sw["worker"]["alt"]["switches"] > sw["worker"]["rep"]["switches"]
    assert len(sw["direct_set_adapter_s"]) > 0 and d["adapter_loads"]["count"] == 2
    assert d["cold"]["api"][0] > d["cold"]["load_seconds"][0] > 0
    assert d["cold"]["direct"][0]["first_token_s"] > d["cold"]["direct"][0]["load_s"] > 0
    assert d["worker_stats"]["model_loads"] >= 1 and d["worker_stats"]["failed"] == 0

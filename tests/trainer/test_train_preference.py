"""Preference tuning for real on the tiny model (CPU, `accelerate launch`), on pairs built from the training
data's pattern (data/preference_*.jsonl: the right answer preferred over a wrong one).

- DPO from a fresh adapter starts at exactly log 2 with zero rewards (policy = reference: LoRA's B is zero),
  and learns the preference: the reward accuracy of the last steps is above 0.8 and the held-out margin is
  positive; every metrics record carries the rewards, and the margin is chosen minus rejected.
- A run resumed from a checkpoint reproduces the uninterrupted run step for step (optimizer, scheduler, data
  position restored), as for SFT.
- Two processes train as one with the same global batch (pairs are never split between processes).
- DPO from an SFT adapter: against the base (the default reference) its first step already prefers the
  right answers; against a frozen copy of the SFT adapter (dpo_reference "initial") it starts at log 2, and
  only the trained adapter is saved.
- ORPO and SimPO train and report their rewards; a method and a data format that do not go together are
  refused before any model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.trainer.conftest import events, finish, of_type, run_module, start
from tests.trainer.test_distributed import start_two

pytestmark = pytest.mark.timeout(900)
TRAIN = REPO_ROOT / "data" / "preference_train.jsonl"
VALID = REPO_ROOT / "data" / "preference_valid.jsonl"
LEARN_STEPS = 200
REWARDS = ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy")


def job(tiny_model_dir: Path, out: Path, *extra: str, method: str = "dpo", steps: int = 12) -> list[str]:
    return [
        "--model",
        str(tiny_model_dir),
        "--training-file",
        str(TRAIN),
        "--output-dir",
        str(out),
        "--method",
        method,
        "--adapter",
        "lora",
        "--max-steps",
        str(steps),
        "--learning-rate",
        "3e-3",
        "--batch-size",
        "8",
        "--hp",
        "dpo_beta=1.0",
        *extra,
    ]


def run_side_by_side(starts: dict[str, Callable[[], Any]], at_once: int = 4) -> dict[str, Any]:
    """Start independent trainer runs a few at a time and wait for them all (they share nothing but the
    CPUs; most of a tiny run is its start-up, which overlaps well)."""
    done: dict[str, Any] = {}
    names = list(starts)
    for i in range(0, len(names), at_once):
        group = {name: starts[name]() for name in names[i : i + at_once]}
        done |= {name: finish(proc) for name, proc in group.items()}
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("preference")
    out: dict[str, Any] = {"base": base}
    # Resume: an uninterrupted run that keeps a checkpoint at step 6, and (below) a run resumed from it.
    # Dropout makes the result depend on the restored RNG state too.
    dropout = ("--lora-dropout", "0.1", "--save-steps", "6")
    # Two processes x 4 pairs and one process x 8 pairs take the same pairs in every step.
    two = job(tiny_model_dir, base / "two", steps=6)
    two[two.index("--batch-size") + 1] = "4"
    # SFT, then (below) DPO from its adapter with each reference: the base (adapter off) or the SFT adapter.
    sft = job(tiny_model_dir, base / "sft", method="sft", steps=10)
    sft[sft.index("--training-file") + 1] = str(REPO_ROOT / "data" / "train.jsonl")
    sft[sft.index("--learning-rate") + 1] = "1e-2"
    first: dict[str, Callable[[], Any]] = {
        "learn": lambda: start(
            *job(tiny_model_dir, base / "learn", "--validation-file", str(VALID), steps=LEARN_STEPS),
            "--warmup-ratio",
            "0.1",
            "--lora-r",
            "16",
        ),
        "whole": lambda: start(*job(tiny_model_dir, base / "whole", *dropout)),
        "sft": lambda: start(*sft),
        "two": lambda: start_two(*two),
        "one": lambda: start(*job(tiny_model_dir, base / "one", steps=6)),
        **{
            method: (
                lambda method=method: start(
                    *job(tiny_model_dir, base / method, method=method, steps=4), "--hp", "dpo_beta=auto"
                )
            )
            for method in ("orpo", "simpo")
        },
    }
    out |= run_side_by_side(first)
    then: dict[str, Callable[[], Any]] = {
        "resumed": lambda: start(
            *job(tiny_model_dir, base / "resumed", *dropout),
            "--resume-from",
            str(base / "whole" / "checkpoints" / "checkpoint-6"),
        ),
        **{
            f"from_sft_{reference}": (
                lambda reference=reference: start(
                    *job(tiny_model_dir, base / f"from_sft_{reference}", "--lora-dropout", "0.1", steps=2),
                    "--init-adapter",
                    str(base / "sft" / "adapter"),
                    "--hp",
                    f"dpo_reference={reference}",
                )
            )
            for reference in ("base", "initial")
        },
    }
    out |= run_side_by_side(then)
    return out


def metrics(out: Path) -> list[dict[str, Any]]:
    return of_type(events(out), "metrics")


def test_dpo_starts_at_log_2_and_learns_the_preference(runs: dict[str, Any]) -> None:
    assert runs["learn"].returncode == 0, runs["learn"].stderr[-3000:]
    records = events(runs["base"] / "learn")
    (started,) = of_type(records, "started")
    assert (started["method"], started["adapter"], started["format"]) == ("dpo", "lora", "preference")
    assert started["num_examples"] == 200  # pairs, not sequences
    steps = of_type(records, "metrics")
    assert len(steps) == LEARN_STEPS
    first = steps[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards_chosen"] == first["rewards_rejected"] == first["rewards_margin"] == 0
    for r in steps:
        assert all(isinstance(r[k], float) for k in REWARDS), r
        assert r["rewards_margin"] == pytest.approx(r["rewards_chosen"] - r["rewards_rejected"], abs=1e-6)
    last = steps[-20:]
    accuracy = sum(r["rewards_accuracy"] for r in last) / len(last)
    assert accuracy > 0.8, [r["rewards_accuracy"] for r in last]
    assert sum(r["loss"] for r in last) / len(last) < math.log(2) - 0.2
    final_eval = of_type(records, "eval")[-1]
    assert final_eval["step"] == LEARN_STEPS and final_eval["eval_rewards_margin"] > 0
    assert final_eval["eval_rewards_accuracy"] > 0.5
    completed = of_type(records, "completed")[0]
    assert (Path(completed["adapter_path"]) / "adapter_model.safetensors").is_file()


def test_a_resumed_dpo_run_matches_the_uninterrupted_one(runs: dict[str, Any]) -> None:
    assert runs["whole"].returncode == 0 and runs["resumed"].returncode == 0, runs["resumed"].stderr[-3000:]
    whole, resumed = metrics(runs["base"] / "whole"), metrics(runs["base"] / "resumed")
    assert of_type(events(runs["base"] / "resumed"), "started")[0]["start_step"] == 6
    assert [r["step"] for r in resumed] == list(range(7, 13))
    for a, b in zip(whole[6:], resumed, strict=True):
        for key in ("loss", *REWARDS):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (key, a, b)


def test_two_processes_train_pairs_as_one(runs: dict[str, Any]) -> None:
    assert runs["two"].returncode == 0, runs["two"].stderr[-3000:]
    two, one = metrics(runs["base"] / "two"), metrics(runs["base"] / "one")
    assert of_type(events(runs["base"] / "two"), "started")[0]["num_processes"] == 2
    assert len(two) == len(one) == 6
    for a, b in zip(one, two, strict=True):
        for key in ("loss", *REWARDS):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)


@pytest.mark.parametrize("method", ["orpo", "simpo"])
def test_orpo_and_simpo_train_and_report_rewards(runs: dict[str, Any], method: str) -> None:
    assert runs[method].returncode == 0, runs[method].stderr[-3000:]
    records = events(runs["base"] / method)
    started = of_type(records, "started")[0]
    # "auto" beta: each method's recommended value.
    assert started["config"]["hyperparameters"]["dpo_beta"] == (2.0 if method == "simpo" else 0.1)
    steps = of_type(records, "metrics")
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)
    # No reference model: a fresh adapter's rewards are the base's own (β x mean log-probability), not 0.
    assert steps[0]["rewards_chosen"] < 0 and steps[0]["rewards_rejected"] < 0


@pytest.mark.parametrize(
    ("method", "data", "fragment"),
    [
        ("dpo", REPO_ROOT / "data" / "train.jsonl", "trains on preference pairs"),
        ("sft", TRAIN, "holds preference pairs"),
    ],
)
def test_a_method_and_a_data_format_that_do_not_match_are_refused(
    tiny_model_dir: Path, tmp_path: Path, method: str, data: Path, fragment: str
) -> None:
    args = job(tiny_model_dir, tmp_path / "out", method=method)
    args[args.index("--training-file") + 1] = str(data)
    result = run_module(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    (failed,) = of_type(events(tmp_path / "out"), "failed")
    assert failed["code"] == "invalid_data" and failed["data_code"] == "format_mismatch"
    assert failed["file"] == "training_file" and fragment in failed["message"]


def test_dpo_from_an_sft_adapter_against_the_base_or_against_the_sft_adapter(runs: dict[str, Any]) -> None:
    assert runs["sft"].returncode == 0, runs["sft"].stderr[-3000:]
    firsts = {}
    for reference in ("base", "initial"):
        result = runs[f"from_sft_{reference}"]
        assert result.returncode == 0, result.stderr[-3000:]
        out = runs["base"] / f"from_sft_{reference}"
        started = of_type(events(out), "started")[0]
        assert started["config"]["hyperparameters"]["dpo_reference"] == reference
        assert started["model_setup"]["init_adapter"] == str(runs["base"] / "sft" / "adapter")
        firsts[reference] = metrics(out)[0]
        # Only the trained adapter is saved, never the reference copy.
        saved = [p.name for p in (out / "adapter").iterdir() if p.is_dir()]
        assert saved == [], saved
    # The SFT weights already prefer the right answers to the base's: rewards from the first step.
    assert firsts["base"]["rewards_margin"] > 0.05 and firsts["base"]["rewards_accuracy"] > 0.5, firsts
    assert abs(firsts["base"]["loss"] - math.log(2)) > 0.01
    # Against the SFT adapter itself, policy = reference at the start (dropout off in the reference).
    assert firsts["initial"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert firsts["initial"]["rewards_margin"] == pytest.approx(0, abs=1e-6)

"""SIGTERM to the launcher's process group mid-run -> `interrupted` + checkpoint; resume finishes the same
total from the saved step, and reproduces the uninterrupted run exactly (optimizer, scheduler, RNG and data
position all restored)."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import REPO_ROOT
from tests.trainer.conftest import events, finish, of_type, start, trainer_env

TOTAL = 60
# The module fixture runs the trainer four times (~1 min on an idle 2-core machine); pytest-timeout counts
# fixture set-up against the first test, so allow for a busy machine.
pytestmark = pytest.mark.timeout(900)


def common(tiny_model_dir: Path, train_file: Path, out: Path) -> list[str]:
    # lora_dropout > 0 makes the result depend on the restored RNG state too.
    return [
        "--model",
        str(tiny_model_dir),
        "--training-file",
        str(train_file),
        "--output-dir",
        str(out),
        "--method",
        "lora",
        "--max-steps",
        str(TOTAL),
        "--learning-rate",
        "1e-3",
        "--lora-dropout",
        "0.1",
        "--batch-size",
        "4",
    ]


def wait_for(out: Path, predicate: Any, timeout: float = 180) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = events(out)
        if predicate(records):
            return records
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting; events so far: {[r['type'] for r in events(out)]}")


def gone(procs: list[psutil.Process], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, train_file: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("resume")
    out = base / "out"
    proc = start(*common(tiny_model_dir, train_file, out))
    try:
        wait_for(out, lambda rs: any(r["type"] == "metrics" and r["step"] >= 5 for r in rs))
        children = psutil.Process(proc.pid).children(recursive=True)
        import os

        os.killpg(proc.pid, signal.SIGTERM)
        wait_for(out, lambda rs: any(r["type"] in ("interrupted", "completed", "failed") for r in rs), 120)
        child_exited = gone(children)
    finally:
        first = finish(proc, timeout=60)
    interrupted = of_type(events(out), "interrupted")
    assert interrupted, events(out)
    # Three independent runs from here: the resume, the uninterrupted reference and the service's
    # out-of-memory retry (engine/retry.py: the same checkpoint, half the micro-batch, twice the gradient
    # accumulation), side by side.
    checkpoint = interrupted[0]["checkpoint_path"]
    reference_out, halved_out = base / "reference", base / "halved"
    procs = [
        start(*common(tiny_model_dir, train_file, out), "--resume-from", checkpoint),
        start(*common(tiny_model_dir, train_file, reference_out)),
        start(
            *common(tiny_model_dir, train_file, halved_out),
            "--batch-size",
            "2",
            "--gradient-accumulation-steps",
            "2",
            "--resume-from",
            checkpoint,
        ),
    ]
    resumed, reference, halved = (finish(p) for p in procs)
    return {
        "out": out,
        "first": first,
        "resumed": resumed,
        "child_exited": child_exited,
        "reference": events(reference_out),
        "reference_proc": reference,
        "halved": events(halved_out),
        "halved_proc": halved,
    }


def test_sigterm_to_the_group_checkpoints_and_reports_interrupted(runs: dict[str, Any]) -> None:
    records = events(runs["out"])
    first_run = records[: [r["type"] for r in records].index("interrupted") + 1]
    (interrupted,) = of_type(first_run, "interrupted")
    n = interrupted["step"]
    assert 5 <= n < TOTAL
    assert interrupted["signal"] == "SIGTERM" and interrupted["exit_code"] == 4
    # The step in flight was finished and checkpointed before stopping.
    assert of_type(first_run, "metrics")[-1]["step"] == n
    (ckpt,) = of_type(first_run, "checkpoint")
    assert ckpt["step"] == n and ckpt["path"] == interrupted["checkpoint_path"]
    path = Path(ckpt["path"])
    assert path.name == f"checkpoint-{n}"
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.pt"} <= {
        p.name for p in path.iterdir()
    }
    assert not path.with_name(path.name + ".tmp").exists()
    assert runs["child_exited"], "the training child kept running after SIGTERM"
    assert sum(r["type"] in ("completed", "failed", "interrupted") for r in first_run) == 1


def test_resume_starts_at_the_saved_step_and_finishes_the_same_total(runs: dict[str, Any]) -> None:
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-3000:]
    records = events(runs["out"])
    cut = [r["type"] for r in records].index("interrupted") + 1
    n = records[cut - 1]["step"]
    before, after = records[:cut], records[cut:]
    started = after[0]
    assert started["type"] == "started" and started["start_step"] == n and started["total_steps"] == TOTAL
    assert started["config"]["resume_from"].endswith(f"checkpoint-{n}")
    assert [m["step"] for m in of_type(after, "metrics")] == list(range(n + 1, TOTAL + 1))
    (completed,) = of_type(after, "completed")
    assert completed["total_steps"] == TOTAL
    # The adapter was not wrapped a second time: same trainable parameter count, same tensor names.
    assert started["trainable_params"] == before[0]["trainable_params"]
    from safetensors import safe_open

    with safe_open(str(Path(completed["adapter_path"]) / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys and not any("base_model.model.base_model" in k for k in keys)
    assert of_type(after, "metrics")[-1]["tokens_seen"] > of_type(before, "metrics")[-1]["tokens_seen"]


def test_resumed_run_reproduces_the_uninterrupted_one(runs: dict[str, Any]) -> None:
    assert runs["reference_proc"].returncode == 0
    reference = {m["step"]: m for m in of_type(runs["reference"], "metrics")}
    records = events(runs["out"])
    merged = {m["step"]: m for m in of_type(records, "metrics")}  # before and after the interruption
    assert sorted(merged) == sorted(reference) == list(range(1, TOTAL + 1))
    for step, ref in reference.items():
        assert math.isclose(merged[step]["learning_rate"], ref["learning_rate"], rel_tol=1e-9), step
        assert math.isclose(merged[step]["loss"], ref["loss"], rel_tol=1e-4, abs_tol=1e-5), step
        assert merged[step]["tokens_seen"] == ref["tokens_seen"], step


def test_a_resume_with_half_the_micro_batch_trains_the_same_steps(runs: dict[str, Any]) -> None:
    """What an out-of-memory retry does: the checkpoint continued with batch_size / 2 and twice the
    gradient accumulation trains each step on the same examples (same token counts), at the same learning
    rates, to the same total; the losses agree with the uninterrupted run's up to LoRA dropout, whose masks
    are drawn per micro-batch (measured: at most 1.8 % apart)."""
    assert runs["halved_proc"].returncode == 0, runs["halved_proc"].stderr[-3000:]
    (started,) = of_type(runs["halved"], "started")
    n = started["start_step"]
    assert n >= 5 and started["total_steps"] == TOTAL
    assert started["config"]["hyperparameters"]["batch_size"] == 2
    reference = {m["step"]: m for m in of_type(runs["reference"], "metrics")}
    halved = {m["step"]: m for m in of_type(runs["halved"], "metrics")}
    assert sorted(halved) == list(range(n + 1, TOTAL + 1))
    for step, m in halved.items():
        ref = reference[step]
        assert m["tokens_seen"] == ref["tokens_seen"], step
        assert math.isclose(m["learning_rate"], ref["learning_rate"], rel_tol=1e-9), step
        assert math.isclose(m["loss"], ref["loss"], rel_tol=0.05), (step, m["loss"], ref["loss"])


def test_sigint_to_the_trainer_itself_exits_4(tmp_path: Path, tiny_model_dir: Path, train_file: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuning_trainer", *common(tiny_model_dir, train_file, out)],
        cwd=REPO_ROOT,
        env=trainer_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(out, lambda rs: any(r["type"] == "metrics" for r in rs))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 4
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (interrupted,) = of_type(events(out), "interrupted")
    assert interrupted["signal"] == "SIGINT" and Path(interrupted["checkpoint_path"]).is_dir()

"""The dry run's service side (engine/estimate.py): the planner's answers and failures become create's
errors, a planner that hangs is killed (504), one that dies without an answer is a 500 naming its output,
and the seconds come from past jobs of the same shape only. The planner itself runs for real in
tests/service/test_e2e_training.py (the estimate equals the real job's `started` record)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.service.core_fixtures import make_settings, request, run
from tuning_service.engine import estimate
from tuning_service.engine.estimate import Estimator, problem
from tuning_service.engine.facade import JobManager
from tuning_service.errors import APIError


@pytest.mark.parametrize(
    ("err", "status", "code", "param", "line"),
    [
        ({"code": "model_not_found", "message": "m"}, 404, "model_not_found", "model", None),
        ({"code": "model_unavailable", "message": "m"}, 404, "model_unavailable", "model", None),
        (
            {
                "code": "invalid_data",
                "message": "m",
                "data_code": "no_trainable_tokens",
                "file": "training_file",
            },
            422,
            "no_trainable_tokens",
            "training_file",
            None,
        ),
        (
            {
                "code": "invalid_data",
                "message": "m",
                "data_code": "invalid_json",
                "file": "validation_file",
                "line": 3,
            },
            422,
            "invalid_json",
            "validation_file",
            3,
        ),
        (
            {"code": "invalid_config", "message": "m", "param": "hyperparameters.attn_implementation"},
            422,
            "invalid_hyperparameter",
            "hyperparameters.attn_implementation",
            None,
        ),
        ({"code": "training_error", "message": "boom"}, 500, "estimate_failed", None, None),
    ],
)
def test_the_planners_failures_are_creates_errors(
    err: dict[str, Any], status: int, code: str, param: str | None, line: int | None
) -> None:
    exc = problem(err)
    assert (exc.status_code, exc.code, exc.param, exc.extra.get("line")) == (status, code, param, line)
    if code == "no_trainable_tokens":
        assert exc.message.startswith("training_file: ")


async def _estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> APIError:
    monkeypatch.setattr(estimate, "COMMAND", (sys.executable, "-c", script))
    with pytest.raises(APIError) as info:  # it fails before the store is asked for past jobs
        await Estimator(make_settings(tmp_path), store=None).estimate(request())  # type: ignore[arg-type]
    return info.value


def test_a_planner_that_hangs_is_killed_with_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(estimate, "TIMEOUT_SECONDS", 0.5)
    marker = f"estimate-hang-{tmp_path.name}"
    # The planner and a child of its own: a timeout kills both (its process group).
    script = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{marker}']); time.sleep(60)"
    )
    err = run(_estimate(tmp_path, monkeypatch, script))
    assert (err.status_code, err.code) == (504, "estimate_timeout") and "0.5 s" in err.message
    left = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in left if p.is_running()), left


def test_a_planner_that_dies_without_an_answer_is_a_500_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = "import sys; print('Segmentation fault in the tokenizer', file=sys.stderr); sys.exit(139)"
    err = run(_estimate(tmp_path, monkeypatch, script))
    assert (err.status_code, err.code) == (500, "estimate_failed")
    assert "exited 139" in err.message and "Segmentation fault in the tokenizer" in err.message


def test_seconds_come_from_past_jobs_of_the_same_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = {"hidden": 64, "layers": 2}
    runs = [(shape, 1000, 10.0), (shape, 3000, 10.0), (shape, 2000, 10.0), ({"hidden": 4096}, 10, 10.0)]
    seen: dict[str, Any] = {}

    async def past_runs(**kw: Any) -> list[tuple[dict[str, Any], int, float]]:
        seen.update(kw)
        return runs

    async def body() -> tuple[float | None, int]:
        settings = make_settings(tmp_path)
        est = Estimator(settings, store=None)  # type: ignore[arg-type]
        monkeypatch.setattr(est, "store", type("S", (), {"past_runs": staticmethod(past_runs)})())
        return await est._seconds(
            {"device": "cpu", "shape": shape, "tokens_to_process": 4000}, "sft", "lora", 2
        )

    seconds, based_on = run(body())
    # The median speed of the three of that shape: 200 tokens/s.
    assert (seconds, based_on) == (20.0, 3)
    assert seen == {"method": "sft", "adapter": "lora", "device": "cpu", "num_processes": 2}


def test_the_planner_gets_the_callers_hf_token_and_nothing_else_of_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gated model's tokenizer needs the caller's Hugging Face token (keys set-integration --hf-token);
    the planner answers here with what it was given, as an `error` the route would report."""
    script = (
        "import json, os; "
        "print(json.dumps({'error': {'code': 'training_error', "
        "'message': repr((os.environ.get('HF_TOKEN'), os.environ.get('WANDB_API_KEY')))}}))"
    )
    monkeypatch.setattr(estimate, "COMMAND", (sys.executable, "-c", script))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)

    async def body() -> str:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        try:
            owner, _ = await m.create_key("a")
            await m.set_key_credentials("a", {"hf_token": "hf_GATED", "wandb_api_key": "w"})
            with pytest.raises(APIError) as info:
                await m.estimate(owner=owner, request=request())
            return info.value.message
        finally:
            await m.stop()

    assert run(body()).endswith("('hf_GATED', None)")

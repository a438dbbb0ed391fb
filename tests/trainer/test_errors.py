"""errors.py: out-of-memory classification (CUDA and CPU) and the exit code of every failure kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuning_trainer import errors
from tuning_trainer.errors import TrainerError, classify, is_out_of_memory


@pytest.mark.parametrize(
    "exc",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        torch.OutOfMemoryError("out of memory"),
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 137438953472 bytes. Error code 12 (Cannot allocate memory)"
        ),
        RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    ],
    ids=["cuda-oom", "torch-oom", "memory-error", "cpu-allocator", "cuda-error-oom"],
)
def test_out_of_memory_is_classified_with_a_hint(exc: BaseException) -> None:
    assert is_out_of_memory(exc)
    err = classify(exc)
    assert (err.code, err.exit_code) == (errors.OUT_OF_MEMORY, errors.EXIT_OOM)
    assert err.hint and "batch_size" in err.hint
    record = err.record()
    assert record["code"] == "out_of_memory" and record["hint"] == err.hint and record["exit_code"] == 3


def test_a_real_cpu_allocation_failure_is_classified() -> None:
    with pytest.raises(RuntimeError) as info:
        torch.empty(1 << 62, dtype=torch.uint8)
    assert classify(info.value).code == errors.OUT_OF_MEMORY


@pytest.mark.parametrize("exc", [RuntimeError("shape mismatch"), ValueError("x"), KeyError("k")])
def test_other_errors_are_training_errors(exc: BaseException) -> None:
    err = classify(exc)
    assert (err.code, err.exit_code, err.hint) == (errors.TRAINING_ERROR, errors.EXIT_FAILURE, None)


def test_trainer_errors_pass_through() -> None:
    err = TrainerError(errors.MODEL_NOT_FOUND, "nope", errors.EXIT_USER_ERROR, extra={"param": "model"})
    assert classify(err) is err
    assert err.record() == {"code": "model_not_found", "message": "nope", "param": "model", "exit_code": 2}


@pytest.mark.parametrize(("resolved", "suggested"), [(None, None), (8, 4), (6, 3), (5, 1), (9, 3), (1, None)])
def test_oom_during_training_exits_3_with_a_failed_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resolved: int | None, suggested: int | None
) -> None:
    """The entry point maps an OOM raised inside the recipe to exit 3 and a `failed` record with the hint,
    and the micro-batch to retry with: half the one the run resolved (None while still "auto", or at 1)."""
    import signal

    from tuning_trainer import recipe
    from tuning_trainer.__main__ import run
    from tuning_trainer.events import read_events

    def oom(self: recipe.Recipe) -> int:
        if resolved is not None:  # what setup's run plan does with batch_size "auto"
            self.hp = self.hp.model_copy(update={"batch_size": resolved})
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(recipe.Recipe, "run", oom)
    # run() installs the trainer's SIGTERM/SIGINT handlers: give pytest its own back afterwards.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    train = Path(__file__).resolve().parents[2] / "data" / "train.jsonl"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    try:
        rc = run(["--model", str(model_dir), "--training-file", str(train), "--output-dir", str(tmp_path)])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    (failed,) = read_events(tmp_path / "events.jsonl")
    assert rc == 3
    assert failed["type"] == "failed" and failed["code"] == "out_of_memory" and "hint" in failed
    assert failed["suggested_batch_size"] == suggested

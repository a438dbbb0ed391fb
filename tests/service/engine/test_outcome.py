from __future__ import annotations

from typing import Any

from tuning_service.engine.outcome import decide_outcome, progress_fields
from tuning_service.schema.jobs import JobError, TrainingMetrics
from tuning_service.states import JobStatus


def row(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "ftjob-1",
        "model": "tiny",
        "request": {"suffix": None},
        "metrics": None,
        "hyperparameters": {"epochs": "auto", "batch_size": "auto", "learning_rate": 0.0002},
        "terminal_record": None,
        "cancel_requested_at": None,
        "adapter_path": None,
    }
    base.update(kw)
    return base


def test_progress_from_records() -> None:
    r = row()
    started = ("started", 1.0, {"total_steps": 10, "total_epochs": 2, "start_step": 4,
                                "config": {"hyperparameters": {"epochs": 2, "batch_size": 8}},
                                "resolved_auto": {"epochs": 2}})  # fmt: skip
    f = progress_fields(r, [started])
    assert f["hyperparameters"] == {"epochs": 2, "batch_size": 8, "learning_rate": 0.0002}
    assert f["metrics"]["progress"] == 0.4 and f["metrics"]["current_step"] == 4  # a resumed run
    r.update(f)
    f = progress_fields(
        r,
        [
            ("metrics", 2.0, {"step": 5, "total_steps": 10, "epoch": 1.0, "loss": 1.5, "learning_rate": 1e-4,
                              "tokens_per_second": 99.0, "eta_seconds": 3.0, "tokens_seen": 640}),
            ("eval", 2.5, {"step": 5, "eval_loss": 1.7}),
            ("checkpoint", 2.6, {"step": 5, "path": "/j/checkpoints/checkpoint-5"}),
            ("some_future_type", 2.7, {"x": 1}),  # unknown types are ignored
        ],
    )  # fmt: skip
    m = f["metrics"]
    assert (m["progress"], m["current_step"], m["current_epoch"], m["train_loss"]) == (0.5, 5, 1.0, 1.5)
    assert (m["eval_loss"], m["tokens_per_second"], m["eta_seconds"]) == (1.7, 99.0, 3.0)
    assert f["trained_tokens"] == 640 and f["checkpoint_path"] == "/j/checkpoints/checkpoint-5"
    r.update(f)
    done = {"adapter_path": "/j/adapter", "final_loss": 1.2, "tokens_seen": 900}
    f = progress_fields(r, [("completed", 3.0, done), ("failed", 3.1, {"code": "x"})])
    assert f["terminal_record"]["type"] == "completed"  # the first terminal record wins
    assert f["metrics"]["progress"] == 1.0 and f["metrics"]["train_loss"] == 1.2
    assert f["adapter_path"] == "/j/adapter" and f["trained_tokens"] == 900
    assert progress_fields(r, []) == {}


def test_terminal_record_decides() -> None:
    st, msg, f = decide_outcome(
        row(request={"suffix": "s"}, terminal_record={"type": "completed", "adapter_path": "/a"}),
        exit_code=1, killed_by_us=False, log_tail=[],
    )  # fmt: skip
    assert (
        st is JobStatus.SUCCEEDED
        and f["fine_tuned_model"] == "ft:tiny:s:ftjob-1"
        and f["adapter_path"] == "/a"
    )
    # Completed although a cancel was requested: the work is done, it succeeded.
    st, _, _ = decide_outcome(
        row(cancel_requested_at=1.0, terminal_record={"type": "completed"}),
        exit_code=0,
        killed_by_us=False,
        log_tail=[],
    )
    assert st is JobStatus.SUCCEEDED
    st, msg, f = decide_outcome(
        row(terminal_record={"type": "failed", "code": "model_unavailable", "message": "offline",
                             "hint": "h"}),
        exit_code=1, killed_by_us=False, log_tail=["a"],
    )  # fmt: skip
    assert st is JobStatus.FAILED and msg == "offline"
    # Every field of JobError, in its order (a stable shape: null where there is nothing to say).
    assert f["error"] == {"code": "model_unavailable", "message": "offline", "param": None, "exit_code": 1,
                          "signal": None, "log_tail": ["a"], "hint": "h", "data_code": None, "line": None,
                          "checkpoint_path": None}  # fmt: skip
    assert list(f["error"]) == list(JobError.model_fields)


def test_interrupted() -> None:
    term = {"type": "interrupted", "checkpoint_path": "/c/checkpoint-3"}
    st, msg, _ = decide_outcome(row(cancel_requested_at=1.0, terminal_record=term), exit_code=1,
                                killed_by_us=False, log_tail=[])  # fmt: skip
    assert st is JobStatus.CANCELLED and "/c/checkpoint-3" in msg
    # Interrupted by someone else's signal (no cancel request): a failure that names the checkpoint.
    st, msg, f = decide_outcome(row(terminal_record=term), exit_code=4, killed_by_us=False, log_tail=[])
    assert st is JobStatus.FAILED and f["error"]["code"] == "interrupted" and "/c/checkpoint-3" in msg


def test_no_terminal_record() -> None:
    st, msg, _ = decide_outcome(row(cancel_requested_at=1.0), exit_code=-9, killed_by_us=True, log_tail=[],
                                grace_seconds=30)  # fmt: skip
    assert st is JobStatus.CANCELLED and "30 s grace period" in msg
    st, msg, f = decide_outcome(row(), exit_code=-9, killed_by_us=False, log_tail=["x"])
    assert f["error"]["code"] == "trainer_killed" and f["error"]["signal"] == "SIGKILL"
    assert f["error"]["exit_code"] is None
    st, msg, f = decide_outcome(row(), exit_code=None, killed_by_us=False, log_tail=[])
    assert f["error"]["code"] == "trainer_crashed" and "exit status unknown" in msg
    st, msg, f = decide_outcome(row(), exit_code=None, killed_by_us=False, log_tail=["boom"],
                                lost_reason="service_restart")  # fmt: skip
    assert st is JobStatus.FAILED and f["error"]["code"] == "service_restart" and "boom" in msg


def test_trainer_exit_code_from_its_record_beats_the_launchers() -> None:
    # accelerate launch reports 1 for any failing child; the trainer's record carries its own code (2).
    rec = {"type": "failed", "code": "invalid_data", "message": "line 3: bad", "exit_code": 2}
    st, _, f = decide_outcome(row(terminal_record=rec), exit_code=1, killed_by_us=False, log_tail=["x"])
    assert st is JobStatus.FAILED and f["error"]["exit_code"] == 2 and f["error"]["code"] == "invalid_data"
    st, _, f = decide_outcome(
        row(terminal_record={"type": "failed", "code": "training_error", "message": "boom"}),
        exit_code=1, killed_by_us=False, log_tail=[],
    )  # fmt: skip
    assert f["error"]["exit_code"] == 1


def test_current_epoch_is_the_epoch_in_progress_as_an_integer() -> None:
    r = row()
    started = {"total_steps": 30, "total_epochs": 3, "steps_per_epoch": 10, "start_step": 0}
    f = progress_fields(r, [("started", 1.0, started)])
    assert f["metrics"]["current_epoch"] == 1  # "Epoch 1/3" before the first step, never 0
    r.update(f)
    for epoch, expected in [(0.1, 1), (1.0, 1), (1.33, 2), (2.999, 3), (3.0, 3)]:
        rec = {"step": 1, "total_steps": 30, "epoch": epoch, "loss": 1.0}
        f = progress_fields(r, [("metrics", 2.0, rec)])
        assert f["metrics"]["current_epoch"] == expected and isinstance(f["metrics"]["current_epoch"], int)
    resumed = dict(started, start_step=15)
    assert progress_fields(row(), [("started", 1.0, resumed)])["metrics"]["current_epoch"] == 2


def test_metrics_always_have_a_progress() -> None:
    # An eval record, or a metrics record without total_steps, before the trainer's `started`: the metrics
    # object is made then, and progress is a number from the first (the document never says null).
    for record in (("eval", 1.0, {"eval_loss": 1.5}), ("metrics", 1.0, {"step": 3, "loss": 2.0})):
        fields = progress_fields(row(metrics=None), [record])
        assert fields["metrics"]["progress"] == 0.0
        assert list(fields["metrics"]) == list(TrainingMetrics.model_fields)


def test_a_run_stopped_before_it_started_and_a_run_its_executor_lost() -> None:
    # Cancelled (or paused) while the cluster still held it pending: nothing ran, nothing to wait for.
    status, message, _ = decide_outcome(
        row(status="cancelling", cancel_requested_at=1.0), exit_code=None, killed_by_us=False, log_tail=[],
        never_started=True,
    )  # fmt: skip
    assert status == JobStatus.CANCELLED and "before it started" in message
    status, message, fields = decide_outcome(
        row(status="pausing", pause_requested_at=1.0), exit_code=None, killed_by_us=False, log_tail=[],
        never_started=True,
    )  # fmt: skip
    assert status == JobStatus.PAUSED and fields == {"error": None}
    # Lost by its executor: the executor's own account is the message, the code names the loss.
    status, message, fields = decide_outcome(
        row(status="running"), exit_code=None, killed_by_us=False, log_tail=["step 3"],
        lost_reason="executor_lost", lost_message="the Ray head at http://h:8265 has not answered for 15 s",
    )  # fmt: skip
    assert status == JobStatus.FAILED and message.startswith("the Ray head")
    assert fields["error"]["code"] == "executor_lost" and fields["error"]["log_tail"] == ["step 3"]
    # The trainer's own verdict still wins over a loss.
    status, _, _ = decide_outcome(
        row(status="running", terminal_record={"type": "completed", "adapter_path": "/a"}), exit_code=None,
        killed_by_us=False, log_tail=[], lost_reason="executor_lost", lost_message="gone",
    )  # fmt: skip
    assert status == JobStatus.SUCCEEDED


def test_a_run_lost_while_pausing_is_not_paused() -> None:
    """Nothing says a run its executor lost during a pause stopped: a resume would start a second run beside
    it, so the job fails (resumable from its checkpoint); a cancel stays a cancel, and says so."""
    lost = {"lost_reason": "executor_lost", "lost_message": "the Ray head at h has not answered for 15 s"}
    status, message, fields = decide_outcome(
        row(status="pausing", pause_requested_at=1.0), exit_code=None, killed_by_us=False, log_tail=[], **lost
    )
    assert status == JobStatus.FAILED and fields["error"]["code"] == "executor_lost"
    status, message, _ = decide_outcome(
        row(status="cancelling", cancel_requested_at=1.0), exit_code=None, killed_by_us=False, log_tail=[],
        **lost,
    )  # fmt: skip
    assert status == JobStatus.CANCELLED and "may not have stopped" in message


def test_a_run_ray_failed_without_an_exit_code_says_what_ray_said() -> None:
    """The supervisor adds Ray's own account (Run.note) as the tail's last line: the message ends with it."""
    note = "[ray] job j FAILED: Job supervisor actor died"
    status, message, fields = decide_outcome(
        row(status="running"), exit_code=None, killed_by_us=False, log_tail=["step 2", note]
    )
    assert status == JobStatus.FAILED and fields["error"]["code"] == "trainer_crashed"
    assert "its executor did not say" in message and message.endswith(repr(note))

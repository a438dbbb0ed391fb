"""Models: frozen, tolerant of unknown fields, faithful to the API's job object."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import ValidationError

from tests.sdk.objects import (
    conform,
    hyperparameters_body,
    job_body,
    job_error_body,
    metrics_body,
    record,
    validate,
)
from tuning_sdk import Hyperparameters, JobStatus, LogRecord, TrainingMetrics, TuningJob
from tuning_service.schema import jobs as documented

# A failed job as the service sends it (job_body validates it against the service's TuningJob).
FULL_JOB = job_body(
    "ftjob-3f2c",
    "failed",
    validation_file="data/valid.jsonl",
    adapter="lora",
    hyperparameters=hyperparameters_body(epochs=3, learning_rate=0.0002, batch_size=4),
    suffix="s",
    metadata={"team": "nlp"},
    started_at=1764150001,
    finished_at=1764150011,
    duration=10.5,
    trained_tokens=12345,
    error=job_error_body(
        "model_not_found",
        "no such model",
        param="model",
        exit_code=2,
        log_tail=["Traceback (most recent call last):", "OSError: no such model"],
        hint="check the model name",
    ),
    metrics=metrics_body(
        progress=0.42,
        current_step=21,
        total_steps=50,
        current_epoch=1,
        total_epochs=3,
        train_loss=1.23,
        learning_rate=0.00018,
        tokens_per_second=9000.0,
        eta_seconds=3.1,
    ),
)

# The same job from a newer service, with fields this one does not define: off the contract on purpose.
FUTURE_JOB = {
    **FULL_JOB,
    "hyperparameters": {**FULL_JOB["hyperparameters"], "brand_new_knob": 7},
    "metrics": {**FULL_JOB["metrics"], "future_metric": 1},
    "error": {**FULL_JOB["error"], "future_detail": "x"},
    "a_field_from_the_future": {"x": 1},
}


def test_full_job_round_trip() -> None:
    job = TuningJob.from_dict(FULL_JOB)
    assert job.id == "ftjob-3f2c" and job.status == JobStatus.FAILED and job.is_terminal
    assert not job.is_successful and not job.is_running
    assert job.duration == 10.5 and job.trained_tokens == 12345 and job.metadata == {"team": "nlp"}
    assert (job.method, job.adapter, job.from_checkpoint) == ("sft", "lora", None)
    assert (job.seed, job.created_at) == (42, 1764150000)
    assert job.hyperparameters.epochs == 3 and job.hyperparameters.lora_r == 16
    assert job.hyperparameters.extra == {}
    assert job.error is not None and job.error.code == "model_not_found" and job.error.exit_code == 2
    assert job.error.log_tail == ("Traceback (most recent call last):", "OSError: no such model")
    assert job.error.signal is None and job.error.hint == "check the model name"
    assert str(job.error) == "no such model (model_not_found)"
    m = job.metrics
    assert m is not None
    assert (m.progress, m.current_epoch, m.total_epochs, m.train_loss) == (0.42, 1, 3, 1.23)
    assert m.eval_loss is None
    assert job.to_dict() == FULL_JOB
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.status = "running"  # type: ignore[misc]


def test_fields_from_a_newer_service_are_kept_not_refused() -> None:
    with pytest.raises(ValidationError):  # really unknown to this service: the test means something
        validate(documented.TuningJob, FUTURE_JOB)
    job, known = TuningJob.from_dict(FUTURE_JOB), TuningJob.from_dict(FULL_JOB)
    assert dataclasses.replace(job, hyperparameters=known.hyperparameters) == known
    assert job.hyperparameters.extra == {"brand_new_knob": 7}
    assert job.metrics is not None and job.metrics.raw["future_metric"] == 1
    assert job.error is not None and job.error.raw["future_detail"] == "x"
    assert job.to_dict()["a_field_from_the_future"] == {"x": 1}  # nothing the service sent is lost


def test_minimal_and_odd_jobs_parse() -> None:
    # Off the contract on purpose: a broken or foreign server must not make the SDK raise.
    job = TuningJob.from_dict({"id": "j", "status": "a_status_from_the_future", "model": "m"})
    assert job.metrics is None and job.error is None and not job.is_terminal and job.duration is None
    assert (job.created_at, job.seed, job.method, job.webhook_events) == (0, 0, "", None)
    assert (job.adapter, job.from_checkpoint) == ("", None)
    job = TuningJob.from_dict({**FULL_JOB, "error": "plain text", "metrics": None, "hyperparameters": None})
    assert job.error is not None and job.error.message == "plain text" and job.error.log_tail == ()
    assert job.metrics is None and job.hyperparameters == Hyperparameters()
    # An older service's one-string log tail still reads as lines; a numeric signal is not a name.
    job = TuningJob.from_dict({**FULL_JOB, "error": {"message": "x", "log_tail": "a\nb", "signal": 9}})
    assert job.error is not None and job.error.log_tail == ("a", "b") and job.error.signal is None


def test_webhook_and_restart_fields_are_typed() -> None:
    job = TuningJob.from_dict(
        conform(
            documented.TuningJob,
            {
                **FULL_JOB,
                "resume_on_restart": True,
                "webhook_url": "https://hooks.example.com/t",
                "webhook_events": ["job.succeeded", "job.checkpoint"],
            },
        )
    )
    assert job.resume_on_restart is True and job.webhook_url == "https://hooks.example.com/t"
    assert job.webhook_events == ("job.succeeded", "job.checkpoint")
    bare = TuningJob.from_dict(FULL_JOB)  # a job without a webhook has neither field
    assert (bare.resume_on_restart, bare.webhook_url, bare.webhook_events) == (False, None, None)


def test_trackers_and_governance_fields_are_typed() -> None:
    trackers = [
        {"type": "wandb", "wandb": {"project": "p", "name": None, "entity": "team", "tags": ["x"]}},
        {"type": "tensorboard"},
    ]
    wire = job_body(integrations=trackers, priority=10, max_runtime_seconds=7200, auto_retry=3, retries=2)
    job = TuningJob.from_dict(wire)
    assert job.integrations == tuple(trackers) and job.integrations[0]["wandb"]["entity"] == "team"
    assert (job.priority, job.max_runtime_seconds, job.auto_retry, job.retries) == (10, 7200, 3, 2)
    # An older service sends none of them: the defaults of a job that asked for none.
    new_fields = ("integrations", "priority", "max_runtime_seconds", "auto_retry", "retries")
    job = TuningJob.from_dict({k: v for k, v in FULL_JOB.items() if k not in new_fields})
    assert [getattr(job, name) for name in new_fields] == [(), 0, None, 0, 0]
    # Odd values (off the contract) do not raise.
    odd = TuningJob.from_dict(
        {**FULL_JOB, "integrations": [{"type": "x"}, "tensorboard"], "priority": "high"}
    )
    assert odd.integrations == ({"type": "x"},) and odd.priority == 0


def test_a_preference_job_from_a_checkpoint_is_typed() -> None:
    wire = job_body(
        "ftjob-dpo",
        "running",
        method="dpo",
        adapter="lora",
        from_checkpoint="ftjob-3f2c:40",
        hyperparameters=hyperparameters_body(epochs=1, dpo_beta="auto", simpo_gamma_beta_ratio=0.3),
    )
    job = TuningJob.from_dict(wire)
    assert (job.method, job.adapter, job.from_checkpoint) == ("dpo", "lora", "ftjob-3f2c:40")
    assert job.hyperparameters.dpo_beta == "auto" and job.hyperparameters.simpo_gamma_beta_ratio == 0.3
    assert job.hyperparameters.extra == {} and job.to_dict() == wire
    job = TuningJob.from_dict(job_body(method="simpo", from_checkpoint="ftckpt-3f2c-40"))
    assert (job.method, job.adapter, job.from_checkpoint) == ("simpo", "qlora", "ftckpt-3f2c-40")


def test_an_older_services_method_is_read_as_todays() -> None:
    # Off the contract on purpose: before preference tuning a job had no `adapter`, and `method` named it.
    old = {k: v for k, v in FULL_JOB.items() if k not in ("adapter", "from_checkpoint")}
    with pytest.raises(ValidationError):
        validate(documented.TuningJob, {**old, "method": "lora"})
    job = TuningJob.from_dict({**old, "method": "lora"})
    assert (job.method, job.adapter, job.from_checkpoint) == ("sft", "lora", None)
    assert job.to_dict()["method"] == "lora"  # the object as sent is kept
    assert TuningJob.from_dict({**old, "method": "qlora"}).adapter == "qlora"
    # With an adapter, "method" is taken as it is.
    assert TuningJob.from_dict({**old, "method": "dpo", "adapter": "qlora"}).method == "dpo"


def test_success_and_status_helpers() -> None:
    job = TuningJob.from_dict({**FULL_JOB, "status": "succeeded", "error": None})
    assert job.is_successful and job.is_terminal
    assert JobStatus("cancelled").is_terminal() and not JobStatus.CANCELLING.is_terminal()
    assert TuningJob.from_dict({**FULL_JOB, "status": "cancelling"}).is_running


def test_metrics_tolerate_missing_and_bad_values() -> None:
    # Off the contract on purpose (a broken server): odd values become None, never an exception.
    m = TrainingMetrics.from_dict({"progress": "x", "current_step": True, "train_loss": "1.5"})
    assert m.progress == 0.0 and m.current_step is None and m.train_loss == 1.5
    assert TrainingMetrics.from_dict({"progress": 1.7}).progress == 1.0


def test_hyperparameters_to_dict_sends_only_what_was_set() -> None:
    hp = Hyperparameters(epochs=2, learning_rate=1e-3, batch_size="auto", extra={"lora_r": 4})
    assert hp.to_dict() == {"epochs": 2, "learning_rate": 1e-3, "batch_size": "auto", "lora_r": 4}
    assert Hyperparameters().to_dict() == {}
    hp = Hyperparameters(dpo_beta=0.2, simpo_gamma_beta_ratio=0.5)
    assert hp.to_dict() == {"dpo_beta": 0.2, "simpo_gamma_beta_ratio": 0.5}
    assert Hyperparameters.from_dict(hp.to_dict()) == hp
    assert Hyperparameters(dpo_beta="auto").to_dict() == {"dpo_beta": "auto"}


def test_log_record() -> None:
    rec = LogRecord.from_dict(record(3, "metrics", time=1.5, step=2, total_steps=5, loss=0.5))
    assert rec.seq == 3 and rec["step"] == 2 and rec.get("nope", 9) == 9
    assert "step 2/5" in rec.format() and "loss 0.5000" in rec.format()
    assert rec.to_dict() == {
        "seq": 3,
        "type": "metrics",
        "time": 1.5,
        "step": 2,
        "total_steps": 5,
        "loss": 0.5,
    }
    status = LogRecord.from_dict(record(9, "status", status="succeeded", message=None))
    assert status.is_terminal_status and status.format() == "status: succeeded"
    assert LogRecord.from_dict(record(4, "log", line="hello")).format() == "hello"
    assert not LogRecord.from_dict(record(5, "status", status="running", message=None)).is_terminal_status
    assert LogRecord.from_dict({"seq": 6, "type": "log"}).time == 0.0  # off the contract: no time


def test_warning_and_retry_records_read_as_lines() -> None:
    warning = LogRecord.from_dict(
        record(7, "warning", code="tracker_failed", message="wandb is not installed", tracker="wandb")
    )
    assert warning.format() == "warning: wandb: wandb is not installed (tracker_failed)"
    plain = LogRecord.from_dict(record(8, "warning", code="slow_disk", message="slow", tracker=None))
    assert plain.format() == "warning: slow (slow_disk)"
    retry = LogRecord.from_dict(
        record(
            9,
            "retry",
            attempt=1,
            max_retries=2,
            reason="trainer_crashed",
            message="the trainer exited with status 1",
            step=4,
            checkpoint="checkpoints/checkpoint-4",
        )
    )
    assert retry.format() == "retry 1/2 (trainer_crashed) from step 4: the trainer exited with status 1"
    assert retry["checkpoint"] == "checkpoints/checkpoint-4" and retry.get("batch_size") is None
    oom = LogRecord.from_dict(
        record(
            10,
            "retry",
            attempt=2,
            max_retries=2,
            reason="out_of_memory",
            message="",
            step=None,
            checkpoint=None,
            batch_size=2,
        )
    )
    assert oom.format() == "retry 2/2 (out_of_memory) from the beginning, batch_size 2"


def test_a_preference_jobs_records_show_the_rewards() -> None:
    rewards = {
        "rewards_chosen": 0.25,
        "rewards_rejected": -0.5,
        "rewards_margin": 0.75,
        "rewards_accuracy": 0.8,
    }
    rec = LogRecord.from_dict(record(3, "metrics", step=2, total_steps=5, epoch=0.4, loss=0.61, **rewards))
    assert rec.get("rewards_margin") == 0.75 and rec["rewards_chosen"] == 0.25
    assert rec.format() == (
        "metrics: step 2/5 | epoch 0.40 | loss 0.6100 | reward margin 0.7500 | reward acc 80.0%"
    )
    sft = LogRecord.from_dict(record(3, "metrics", step=2, total_steps=5, loss=0.61))
    assert "reward" not in sft.format() and sft.get("rewards_margin") is None
    ev = LogRecord.from_dict(
        record(
            4,
            "eval",
            step=2,
            epoch=0.4,
            eval_loss=0.7,
            eval_token_accuracy=0.5,
            eval_rewards_chosen=0.1,
            eval_rewards_rejected=-0.2,
            eval_rewards_margin=0.3,
            eval_rewards_accuracy=0.625,
        )
    )
    assert ev.format() == "eval: step 2 | eval_loss 0.7000 | reward margin 0.3000 | reward acc 62.5%"
    # A diverged eval loss (null) still shows the rewards.
    ev = LogRecord.from_dict(record(5, "eval", step=3, eval_loss=None, eval_rewards_margin=-0.1))
    assert ev.format() == "eval: step 3 | reward margin -0.1000"
    plan: dict[str, Any] = {"total_steps": 5, "total_epochs": 1, "num_examples": 10, "device": "cpu"}
    started = LogRecord.from_dict(record(1, "started", method="dpo", adapter="lora", **plan))
    assert started.format() == "started: 5 steps, 1 epoch(s), 10 examples, dpo (lora) on cpu"


@pytest.mark.parametrize(
    ("epoch", "total", "expected"),
    [
        (0, 3, 0),
        (0.0, 3, 0),
        (0.01, 3, 1),
        (1.0, 3, 2),
        (1.26, 3, 2),
        (2.99, 3, 3),
        (3.0, 3, 3),
        (2, 3, 2),
        (1.5, None, 2),
        ("x", 3, None),
        (None, 3, None),
    ],
)
def test_fractional_epochs_become_the_epoch_in_progress(
    epoch: object, total: int | None, expected: int | None
) -> None:
    assert (
        TrainingMetrics.from_dict({"current_epoch": epoch, "total_epochs": total}).current_epoch == expected
    )

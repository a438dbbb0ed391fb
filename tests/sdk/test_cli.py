"""The `tuning` command against the stub server: output, --json, exit codes."""

from __future__ import annotations

import json
import socket

import pytest

from tests.sdk.objects import (
    deleted_job_body,
    estimate_body,
    health_body,
    job_error_body,
    job_list_body,
    key_usage_body,
    log_page,
    metrics_body,
    record,
)
from tests.sdk.stub import Handler, Recorded, StubServer, error, job_body, reply
from tuning_sdk import cli


def test_health(stub: StubServer, run) -> None:
    stub.route("GET", "/health", reply(200, health_body("1")))
    code, out, _ = run("health")
    assert code == 0 and out.startswith("status: healthy\nversion: 1\nuptime: 1.5\n")
    code, out, _ = run("health", "--json")
    assert code == 0 and json.loads(out) == health_body("1")


def test_create_parses_hyperparameters(stub: StubServer, run) -> None:
    stub.route("POST", "/v1/tunings.create", reply(200, job_body()))
    code, out, _ = run(
        "--json",
        "jobs",
        "create",
        "--model",
        "tiny-llama",
        "--training-file",
        "data/train.jsonl",
        "--hp",
        "epochs=2",
        "--hp",
        "learning_rate=0.001",
        "--hp",
        "batch_size=auto",
        "--hp",
        'lora_target_modules=["q_proj"]',
        "--metadata",
        "team=nlp",
        "--seed",
        "3",
        "--resume-on-restart",
        "--webhook-url",
        "https://hooks.example.com/t",
        "--webhook-event",
        "job.failed",
        "--webhook-event",
        "job.checkpoint",
        "--num-gpus",
        "2",
        "--distributed",
        "fsdp",
    )
    assert code == 0 and json.loads(out)["id"] == "ftjob-1"
    body = stub.calls("POST", "/v1/tunings.create")[0].json()
    assert body["hyperparameters"] == {
        "epochs": 2,
        "learning_rate": 0.001,
        "batch_size": "auto",
        "lora_target_modules": ["q_proj"],
    }
    assert body["metadata"] == {"team": "nlp"} and body["seed"] == 3 and body["resume_on_restart"] is True
    assert body["webhook_url"] == "https://hooks.example.com/t"
    assert body["webhook_events"] == ["job.failed", "job.checkpoint"]
    assert (body["num_gpus"], body["distributed"]) == (2, "fsdp")


def test_create_preference_flags_map_to_the_body(stub: StubServer, run) -> None:
    answer = job_body("ftjob-dpo", method="dpo", adapter="lora", from_checkpoint="ftjob-sft:40")
    stub.route("POST", "/v1/tunings.create", reply(200, answer))
    code, out, _ = run(
        "jobs",
        "create",
        "--model",
        "tiny-llama",
        "--training-file",
        "data/pairs.jsonl",
        "--method",
        "dpo",
        "--adapter",
        "lora",
        "--from-checkpoint",
        "ftjob-sft:40",
        "--hp",
        "dpo_beta=0.2",
        "--hp",
        "simpo_gamma_beta_ratio=0.5",
    )
    assert code == 0, out
    body = stub.calls("POST", "/v1/tunings.create")[0].json()
    assert body == {
        "model": "tiny-llama",
        "training_file": "data/pairs.jsonl",
        "hyperparameters": {"dpo_beta": 0.2, "simpo_gamma_beta_ratio": 0.5},
        "method": "dpo",
        "adapter": "lora",
        "from_checkpoint": "ftjob-sft:40",
    }
    # The job as people read it: what it trains for, on which adapter, from what.
    assert "method           dpo\n" in out and "adapter          lora\n" in out
    assert "from_checkpoint  ftjob-sft:40\n" in out
    # "auto" beta is a string; the legacy --method lora is sent as it is, without an adapter.
    stub.route("POST", "/v1/tunings.create", reply(200, job_body(adapter="lora")))
    code, out, _ = run(
        "jobs", "create", "--model", "m", "--training-file", "f", "--method", "lora", "--hp", "dpo_beta=auto"
    )
    assert code == 0, out
    body = stub.calls("POST", "/v1/tunings.create")[1].json()
    assert body == {
        "model": "m",
        "training_file": "f",
        "method": "lora",
        "hyperparameters": {"dpo_beta": "auto"},
    }
    assert (
        "method           sft\n" in out and "adapter          lora\n" in out and "from_checkpoint" not in out
    )
    for method in ("sft", "orpo", "simpo", "qlora"):
        assert run("jobs", "create", "--model", "m", "--training-file", "f", "--method", method)[0] == 0
    assert [r.json()["method"] for r in stub.calls("POST", "/v1/tunings.create")[2:]] == [
        "sft",
        "orpo",
        "simpo",
        "qlora",
    ]
    with pytest.raises(SystemExit) as info:
        run("jobs", "create", "--model", "m", "--training-file", "f", "--method", "ppo")
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        run("jobs", "create", "--model", "m", "--training-file", "f", "--adapter", "dora")
    assert info.value.code == 2


def test_create_tracker_and_governance_flags_map_to_the_body(stub: StubServer, run) -> None:
    trackers = [
        {
            "type": "wandb",
            "wandb": {"project": "proj", "name": "run-1", "entity": "team", "tags": ["a", "b"]},
        },
        {"type": "mlflow", "mlflow": {"tracking_uri": "https://mlflow.example.com", "experiment": "exp"}},
        {"type": "tensorboard"},
    ]
    answer = job_body(integrations=trackers, priority=10, max_runtime_seconds=3600, auto_retry=2, retries=1)
    stub.route("POST", "/v1/tunings.create", reply(200, answer))
    base = ("jobs", "create", "--model", "m", "--training-file", "f")
    code, out, _ = run(
        *base,
        "--priority", "10",
        "--max-runtime-seconds", "3600",
        "--auto-retry", "2",
        "--tensorboard",
        "--wandb-project", "proj",
        "--wandb-name", "run-1",
        "--wandb-entity", "team",
        "--wandb-tag", "a",
        "--wandb-tag", "b",
        "--mlflow",
        "--mlflow-tracking-uri", "https://mlflow.example.com",
        "--mlflow-experiment", "exp",
    )  # fmt: skip
    assert code == 0, out
    body = stub.calls("POST", "/v1/tunings.create")[0].json()
    assert body == {
        "model": "m",
        "training_file": "f",
        "integrations": trackers,  # wandb, mlflow, tensorboard: the order the flags are documented in
        "priority": 10,
        "max_runtime_seconds": 3600,
        "auto_retry": 2,
    }
    # The job as people read it.
    assert (
        "integrations     wandb (project proj, run run-1, entity team, tags a,b), "
        "mlflow (experiment exp, at https://mlflow.example.com), tensorboard\n"
    ) in out
    assert "priority         10\n" in out and "max_runtime      3600s\n" in out
    assert "auto_retry       1/2 used\n" in out

    # Only what was given: a bare --mlflow (the service's server and experiment), a W&B project alone, and
    # no trackers or governance fields at all when no flag names them.
    stub.route("POST", "/v1/tunings.create", reply(200, job_body()))
    assert run(*base, "--mlflow", "--wandb-project", "p", "--priority", "-3", "--auto-retry", "0")[0] == 0
    assert run(*base, "--mlflow-experiment", "e")[0] == 0  # implies --mlflow
    code, out, _ = run(*base)
    assert code == 0 and "integrations" not in out and "priority" not in out and "auto_retry" not in out
    bodies = [r.json() for r in stub.calls("POST", "/v1/tunings.create")[1:]]
    assert bodies == [
        {
            "model": "m",
            "training_file": "f",
            "integrations": [{"type": "wandb", "wandb": {"project": "p"}}, {"type": "mlflow", "mlflow": {}}],
            "priority": -3,
            "auto_retry": 0,
        },
        {
            "model": "m",
            "training_file": "f",
            "integrations": [{"type": "mlflow", "mlflow": {"experiment": "e"}}],
        },
        {"model": "m", "training_file": "f"},
    ]


def test_wandb_settings_without_a_project_are_a_usage_error(stub: StubServer, run) -> None:
    for flag in ("--wandb-name", "--wandb-entity", "--wandb-tag"):
        with pytest.raises(SystemExit) as info:
            run("jobs", "create", "--model", "m", "--training-file", "f", flag, "x")
        assert info.value.code == cli.EXIT_USAGE
    with pytest.raises(SystemExit) as info:
        run("jobs", "create", "--model", "m", "--training-file", "f", "--priority", "high")
    assert info.value.code == cli.EXIT_USAGE
    assert stub.calls("POST", "/v1/tunings.create") == []


def test_a_create_over_the_quota_exits_3_at_once(stub: StubServer, run, sleeps: list[float]) -> None:
    quota = error(429, "quota_exceeded", "this key has used its GPU hours", "max_gpu_hours")
    stub.route("POST", "/v1/tunings.create", quota)
    code, out, err = run("--json", "jobs", "create", "--model", "m", "--training-file", "f")
    assert code == cli.EXIT_REJECTED and "quota_exceeded" in err and "GPU hours" in err
    assert json.loads(out)["error"] == {
        "type": "QuotaExceededError",
        "message": "this key has used its GPU hours",
        "status_code": 429,
        "code": "quota_exceeded",
        "param": "max_gpu_hours",
        "request_id": "req-quota_exceeded",
    }
    assert len(stub.calls("POST", "/v1/tunings.create")) == 1 and sleeps == []  # not retried


def test_usage_table_and_json(stub: StubServer, run) -> None:
    wire = key_usage_body(
        running_jobs=1,
        queued_jobs=3,
        gpu_hours=12.3456,
        limits={"max_running_jobs": 2, "max_gpu_hours": 100.0},
    )
    stub.route("GET", "/v1/usage", reply(200, wire))
    code, out, _ = run("usage")
    assert code == 0
    assert out.splitlines() == [
        "key      key_0123456789abcdef",
        "window   the last 30 days (GPU hours)",
        "              USED   LIMIT",
        "running jobs  1      2",
        "queued jobs   3      -",
        "GPU hours     12.35  100",
    ]
    for argv in (("usage", "--json"), ("--json", "usage")):
        code, out, _ = run(*argv)
        assert code == 0 and json.loads(out) == wire
    stub.route("GET", "/v1/usage", error(401, "invalid_api_key"))
    assert run("usage")[0] == cli.EXIT_AUTH


def test_logs_show_warnings_and_retries(stub: StubServer, run) -> None:
    data = [
        record(
            1, "warning", code="tracker_failed", message="W&B login failed: tracking off", tracker="wandb"
        ),
        record(
            2,
            "retry",
            attempt=1,
            max_retries=2,
            reason="trainer_crashed",
            message="the trainer exited with status 1",
            step=4,
            checkpoint="checkpoints/checkpoint-4",
        ),
        record(
            3,
            "retry",
            attempt=2,
            max_retries=2,
            reason="out_of_memory",
            message="CUDA out of memory",
            step=None,
            checkpoint=None,
            batch_size=2,
        ),
    ]
    stub.route("GET", "/v1/tunings.logs/", reply(200, log_page(data)))
    code, out, _ = run("jobs", "logs", "ftjob-1")
    lines = [line.split(" ", 2)[2].lstrip(" 0123456789") for line in out.splitlines()]
    assert code == 0 and lines == [
        "warning: wandb: W&B login failed: tracking off (tracker_failed)",
        "retry 1/2 (trainer_crashed) from step 4: the trainer exited with status 1",
        "retry 2/2 (out_of_memory) from the beginning, batch_size 2: CUDA out of memory",
    ]
    stub.route("GET", "/v1/tunings.events/", reply(200, log_page(data)))
    code, out, _ = run("jobs", "events", "ftjob-1")
    assert code == 0 and "retry 1/2 (trainer_crashed) from step 4" in out and "warning: wandb" in out


def test_create_refused_checkpoint_exit_codes(stub: StubServer, run) -> None:
    argv = ("jobs", "create", "--model", "m", "--training-file", "f", "--from-checkpoint", "ftjob-x:4")
    stub.route("POST", "/v1/tunings.create", error(404, "checkpoint_not_found", "no such", "from_checkpoint"))
    code, _, err = run(*argv)
    assert code == cli.EXIT_NOT_FOUND and "from_checkpoint" in err
    stub.route("POST", "/v1/tunings.create", error(409, "checkpoint_not_ready", "not yet", "from_checkpoint"))
    assert run(*argv)[0] == cli.EXIT_REJECTED
    stub.route("POST", "/v1/tunings.create", error(422, "format_mismatch", "pairs", "training_file"))
    code, out, _ = run("--json", *argv, "--method", "dpo")
    assert code == cli.EXIT_REJECTED and json.loads(out)["error"]["code"] == "format_mismatch"


def test_create_dry_run_shows_the_estimate_and_makes_no_job(stub: StubServer, run) -> None:
    stub.route(
        "POST", "/v1/tunings.create", reply(200, estimate_body(estimated_seconds=93.4, based_on_jobs=2))
    )
    code, out, _ = run(
        "jobs", "create", "--model", "tiny-llama", "--training-file", "data/train.jsonl", "--dry-run"
    )
    assert code == 0, out
    assert stub.calls("POST", "/v1/tunings.create")[0].json()["dry_run"] is True
    assert "300 (2 truncated, 0 dropped)" in out and "padding efficiency 81.5%" in out
    assert "54 MiB peak of 24,105 MiB: fits" in out and "~93 s (from 2 past jobs)" in out
    assert "epochs=5, batch_size=4" in out and "model:     tiny-llama (sft, lora)\n" in out
    code, out, _ = run("--json", "jobs", "create", "--model", "m", "--training-file", "f", "--dry-run")
    assert code == 0 and json.loads(out)["object"] == "tuning.estimate"
    stub.route("POST", "/v1/tunings.create", reply(200, estimate_body(memory={
        "peak_mb": 90000, "device_mb": 81000, "fits": False, "breakdown_mb": {}})))  # fmt: skip
    code, out, _ = run("jobs", "create", "--model", "m", "--training-file", "f", "--dry-run")
    assert code == 0 and "DOES NOT FIT" in out and "unknown (this service has not trained" in out


def test_create_rejected_gives_exit_3_and_the_field(stub: StubServer, run) -> None:
    stub.route(
        "POST", "/v1/tunings.create", error(422, "invalid_hyperparameter", "bad lr", "hyperparameters.lr")
    )
    code, out, err = run("jobs", "create", "--model", "m", "--training-file", "f", "--hp", "lr=-1")
    assert code == cli.EXIT_REJECTED and "bad lr" in err and "hyperparameters.lr" in err
    code, out, _ = run("jobs", "create", "--model", "m", "--training-file", "f", "--json")
    assert code == 3 and json.loads(out)["error"]["code"] == "invalid_hyperparameter"


def test_usage_errors_exit_2(run) -> None:
    with pytest.raises(SystemExit) as info:
        run("jobs", "create", "--model", "m", "--training-file", "f", "--hp", "novalue")
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        run("jobs", "frobnicate")
    assert info.value.code == 2


def test_missing_key_exit_2(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNING_API_KEY")
    code, _, err = run("health")
    assert code == cli.EXIT_USAGE and "TUNING_API_KEY" in err


def test_list_get_cancel_delete(stub: StubServer, run) -> None:
    jobs = [job_body(f"ftjob-{i}", status="succeeded", fine_tuned_model=f"ft:m:lora:{i}") for i in range(5)]
    stub.route(
        "GET",
        "/v1/tunings.list",
        reply(200, job_list_body(jobs[:2], has_more=True)),
        reply(200, job_list_body(jobs[2:])),
    )
    code, out, _ = run("jobs", "list", "--limit", "0")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["ID", "STATUS"] and len(lines) == 6
    stub.route("GET", "/v1/tunings.get/", reply(200, job_body("ftjob-7", status="running")))
    code, out, _ = run("jobs", "get", "ftjob-7")
    assert code == 0 and "status           running" in out
    stub.route("POST", "/v1/tunings.cancel/", error(409, "job_terminal", "already ended"))
    assert run("jobs", "cancel", "ftjob-7")[0] == cli.EXIT_REJECTED
    stub.route("DELETE", "/v1/tunings.delete/", reply(200, deleted_job_body("ftjob-7")))
    assert run("jobs", "delete", "ftjob-7") == (0, "deleted ftjob-7\n", "")


def test_not_found_auth_server_connection_codes(stub: StubServer, run, monkeypatch) -> None:
    stub.route("GET", "/v1/tunings.get/", error(404, "job_not_found"))
    assert run("jobs", "get", "nope")[0] == cli.EXIT_NOT_FOUND
    stub.route("GET", "/v1/tunings.get/", error(401, "invalid_api_key"))
    assert run("jobs", "get", "x")[0] == cli.EXIT_AUTH
    stub.route("GET", "/v1/tunings.get/", error(500, "internal_error"))
    assert run("jobs", "get", "x")[0] == cli.EXIT_SERVER
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run("--base-url", f"http://127.0.0.1:{port}", "health")[0] == cli.EXIT_CONNECTION


def test_wait_exit_codes_and_plain_progress(stub: StubServer, run, monkeypatch) -> None:
    monkeypatch.setattr(cli, "_progress_bar", lambda stream: cli._PlainBar(stream))
    metrics = metrics_body(
        progress=1.0, current_step=4, total_steps=4, current_epoch=1, total_epochs=1, train_loss=0.5
    )
    stub.route("GET", "/v1/tunings.get/", reply(200, job_body(status="succeeded", metrics=metrics)))
    code, out, err = run("jobs", "wait", "ftjob-1")
    assert code == 0 and "[##############################] 100.0% step 4/4 | epoch 1/1 | loss 0.5000" in err
    failed = job_body(status="failed", error=job_error_body("out_of_memory", "oom", log_tail=["a", "b"]))
    stub.route("GET", "/v1/tunings.get/", reply(200, failed))
    code, out, _ = run("jobs", "wait", "ftjob-1", "--no-progress")
    assert code == cli.EXIT_JOB_FAILED and "error            oom (out_of_memory)" in out
    assert out.endswith("log tail:\n  a\n  b\n")  # log_tail is an array of lines
    stub.route("GET", "/v1/tunings.get/", reply(200, job_body(status="running")))
    stub.route("GET", "/v1/tunings.logs/", reply(200, log_page([])))
    code, out, _ = run("--json", "jobs", "wait", "ftjob-1", "--timeout", "0.1", "--poll-interval", "0.05")
    assert code == cli.EXIT_WAIT_TIMEOUT and json.loads(out)["error"]["job"]["status"] == "running"


def test_logs(stub: StubServer, run) -> None:
    def logs(h: Handler, req: Recorded) -> None:
        data = [
            record(1, "log", line="hello"),
            record(2, "metrics", step=1, total_steps=2, loss=1.0),
        ]
        h.send_json(200, log_page(data))

    stub.route("GET", "/v1/tunings.logs/", logs)
    code, out, _ = run("jobs", "logs", "ftjob-1")
    assert code == 0 and "hello" in out and "step 1/2" in out
    code, out, _ = run("--json", "jobs", "logs", "ftjob-1")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2]


def test_logs_of_a_preference_job_show_the_rewards(stub: StubServer, run) -> None:
    rewards = {
        "rewards_chosen": 0.5,
        "rewards_rejected": -0.25,
        "rewards_margin": 0.75,
        "rewards_accuracy": 0.875,
    }
    data = [
        record(1, "metrics", step=1, total_steps=2, loss=0.69, **rewards),
        record(2, "eval", step=2, eval_loss=0.6, eval_rewards_margin=0.5, eval_rewards_accuracy=0.75),
        record(3, "metrics", step=2, total_steps=2, loss=0.5),  # an SFT job's: no rewards
    ]
    stub.route("GET", "/v1/tunings.logs/", reply(200, log_page(data)))
    code, out, _ = run("jobs", "logs", "ftjob-1")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].endswith("metrics: step 1/2 | loss 0.6900 | reward margin 0.7500 | reward acc 87.5%")
    assert lines[1].endswith("eval: step 2 | eval_loss 0.6000 | reward margin 0.5000 | reward acc 75.0%")
    assert lines[2].endswith("metrics: step 2/2 | loss 0.5000")


def test_wait_progress_shows_the_rewards_the_job_reports(stub: StubServer, run, monkeypatch) -> None:
    monkeypatch.setattr(cli, "_progress_bar", lambda stream: cli._PlainBar(stream))
    metrics = metrics_body(progress=1.0, current_step=4, total_steps=4, train_loss=0.5)
    # Off the contract on purpose: this service's job metrics carry no rewards (they are in the job's metrics
    # records); the progress line shows them should a service send them there.
    metrics = {**metrics, "rewards_margin": 0.25, "rewards_accuracy": 0.5}
    job = {**job_body(status="succeeded", method="dpo"), "metrics": metrics}
    stub.route("GET", "/v1/tunings.get/", reply(200, job, conform=False))
    code, out, err = run("jobs", "wait", "ftjob-1")
    assert code == 0 and "step 4/4 | loss 0.5000 | reward margin 0.2500 | reward acc 50.0%" in err
    assert "method           dpo\n" in out


def test_closed_pipe_is_not_an_error(stub: StubServer) -> None:
    import os
    import subprocess
    import sys

    lines = [record(i, "log", line="x" * 200) for i in range(1, 2001)]
    stub.route("GET", "/v1/tunings.logs/", reply(200, log_page(lines)))
    env = {**os.environ, "TUNING_API_KEY": "k", "TUNING_BASE_URL": stub.base_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuning_sdk.cli", "jobs", "logs", "ftjob-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err

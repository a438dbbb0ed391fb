"""client.tunings against the stub: request shapes, pagination, wait (stream and polling)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.sdk.objects import (
    deleted_job_body,
    estimate_body,
    job_error_body,
    job_list_body,
    log_page,
    metrics_body,
    record,
)
from tests.sdk.stub import Handler, Recorded, StubServer, job_body, reply
from tuning_sdk import Hyperparameters, TuningClient, TuningEstimate, TuningJob, WaitTimeoutError
from tuning_sdk.resources import tunings


def test_create_sends_every_field(stub: StubServer, client: TuningClient) -> None:
    stub.route("POST", "/v1/tunings.create", reply(200, job_body()))
    job = client.tunings.create(
        "tiny-llama",
        "data/train.jsonl",
        hyperparameters=Hyperparameters(epochs=1, learning_rate=1e-3),
        validation_file="data/valid.jsonl",
        method="lora",
        suffix="demo",
        seed=7,
        metadata={"k": "v"},
        resume_on_restart=True,
    )
    assert isinstance(job, TuningJob) and job.status == "queued"
    (req,) = stub.calls("POST", "/v1/tunings.create")
    assert req.json() == {
        "model": "tiny-llama",
        "training_file": "data/train.jsonl",
        "hyperparameters": {"epochs": 1, "learning_rate": 1e-3},
        "validation_file": "data/valid.jsonl",
        "method": "lora",
        "suffix": "demo",
        "seed": 7,
        "metadata": {"k": "v"},
        "resume_on_restart": True,
    }


def test_create_sends_the_method_adapter_and_checkpoint(stub: StubServer, client: TuningClient) -> None:
    answer = job_body("ftjob-dpo", method="dpo", adapter="lora", from_checkpoint="ftjob-sft:40")
    stub.route("POST", "/v1/tunings.create", reply(200, answer))
    job = client.tunings.create(
        "tiny-llama",
        "file-0123456789abcdef01234567",
        method="dpo",
        adapter="lora",
        from_checkpoint="ftjob-sft:40",
        hyperparameters=Hyperparameters(dpo_beta=0.2, simpo_gamma_beta_ratio=0.4),
    )
    assert (job.method, job.adapter, job.from_checkpoint) == ("dpo", "lora", "ftjob-sft:40")
    (req,) = stub.calls("POST", "/v1/tunings.create")
    assert req.json() == {
        "model": "tiny-llama",
        "training_file": "file-0123456789abcdef01234567",
        "hyperparameters": {"dpo_beta": 0.2, "simpo_gamma_beta_ratio": 0.4},
        "method": "dpo",
        "adapter": "lora",
        "from_checkpoint": "ftjob-sft:40",
    }


def test_create_sends_only_what_was_given(stub: StubServer, client: TuningClient) -> None:
    """Neither adapter nor from_checkpoint unless given: an old call (method="lora") sends the body it always
    sent, and the service reads it as sft with the lora adapter."""
    stub.route("POST", "/v1/tunings.create", reply(200, job_body(adapter="lora")))
    job = client.tunings.create("tiny-llama", "data/train.jsonl", method="lora")
    assert (job.method, job.adapter) == ("sft", "lora")
    client.tunings.create("tiny-llama", "data/train.jsonl")
    client.tunings.create("tiny-llama", "data/train.jsonl", adapter="lora")
    client.tunings.create("tiny-llama", "data/train.jsonl", from_checkpoint="ftckpt-sft-40")
    bodies = [r.json() for r in stub.calls("POST", "/v1/tunings.create")]
    base = {"model": "tiny-llama", "training_file": "data/train.jsonl"}
    assert bodies == [
        {**base, "method": "lora"},
        base,
        {**base, "adapter": "lora"},
        {**base, "from_checkpoint": "ftckpt-sft-40"},
    ]


# The trackers as a job carries them (every setting, defaults filled in) and the W&B one as asked for.
WANDB_ASKED = {"type": "wandb", "wandb": {"project": "p", "name": "run-1", "tags": ["a", "b"]}}
TRACKERS = [
    {"type": "wandb", "wandb": {"project": "p", "name": "run-1", "entity": None, "tags": ["a", "b"]}},
    {"type": "mlflow", "mlflow": {"tracking_uri": "https://mlflow.example.com", "experiment": "e"}},
    {"type": "tensorboard"},
]


def test_create_sends_the_trackers_and_the_governance_fields(stub: StubServer, client: TuningClient) -> None:
    answer = job_body(integrations=TRACKERS, priority=-5, max_runtime_seconds=600, auto_retry=2, retries=1)
    stub.route("POST", "/v1/tunings.create", reply(200, answer))
    job = client.tunings.create(
        "tiny-llama",
        "data/train.jsonl",
        integrations=[WANDB_ASKED, *TRACKERS[1:]],
        priority=-5,
        max_runtime_seconds=600,
        auto_retry=2,
    )
    (req,) = stub.calls("POST", "/v1/tunings.create")
    assert req.json() == {
        "model": "tiny-llama",
        "training_file": "data/train.jsonl",
        "integrations": [WANDB_ASKED, *TRACKERS[1:]],
        "priority": -5,
        "max_runtime_seconds": 600,
        "auto_retry": 2,
    }
    assert job.integrations == tuple(TRACKERS)
    assert (job.priority, job.max_runtime_seconds, job.auto_retry, job.retries) == (-5, 600, 2, 1)
    # Zero is a value, not "unset": sent as given (an empty list of trackers too); the dry run takes them.
    stub.route("POST", "/v1/tunings.create", reply(200, estimate_body()))
    est = client.tunings.create(
        "tiny-llama", "data/train.jsonl", integrations=(), priority=0, auto_retry=0, dry_run=True
    )
    assert isinstance(est, TuningEstimate)
    body = stub.calls("POST", "/v1/tunings.create")[1].json()
    assert body == {
        "model": "tiny-llama",
        "training_file": "data/train.jsonl",
        "integrations": [],
        "priority": 0,
        "auto_retry": 0,
        "dry_run": True,
    }


def test_create_dry_run_returns_the_estimate_with_its_adapter(stub: StubServer, client: TuningClient) -> None:
    stub.route("POST", "/v1/tunings.create", reply(200, estimate_body(method="orpo", adapter="qlora")))
    est = client.tunings.create("tiny-llama", "data/pairs.jsonl", method="orpo", dry_run=True)
    assert isinstance(est, TuningEstimate) and (est.method, est.adapter) == ("orpo", "qlora")
    body = stub.calls("POST", "/v1/tunings.create")[0].json()
    assert body == {
        "model": "tiny-llama",
        "training_file": "data/pairs.jsonl",
        "method": "orpo",
        "dry_run": True,
    }


def test_get_cancel_delete_paths(stub: StubServer, client: TuningClient) -> None:
    stub.route("GET", "/v1/tunings.get/", reply(200, job_body("ftjob-9", status="running")))
    stub.route("POST", "/v1/tunings.cancel/", reply(200, job_body("ftjob-9", status="cancelling")))
    stub.route(
        "DELETE",
        "/v1/tunings.delete/",
        reply(200, deleted_job_body("ftjob-9")),
    )
    assert client.tunings.get("ftjob-9").is_running
    assert client.tunings.cancel("ftjob-9").status == "cancelling"
    deleted = client.tunings.delete("ftjob-9")
    assert deleted.deleted and deleted.id == "ftjob-9"
    paths = [r.path for r in stub.requests]
    assert paths == ["/v1/tunings.get/ftjob-9", "/v1/tunings.cancel/ftjob-9", "/v1/tunings.delete/ftjob-9"]
    # Ids are path segments, never path syntax.
    client.tunings.get("../health")
    assert stub.requests[-1].path == "/v1/tunings.get/..%2Fhealth"
    with pytest.raises(ValueError, match="non-empty job id"):
        client.tunings.get("")


def test_list_follows_cursors_across_pages(stub: StubServer, client: TuningClient) -> None:
    ids = [f"ftjob-{i:02d}" for i in range(7, 0, -1)]

    def page(h: Handler, req: Recorded) -> None:
        limit = int(req.query["limit"][0])
        after = req.query.get("after", [None])[0]
        start = ids.index(after) + 1 if after else 0
        data = [job_body(i, status="succeeded") for i in ids[start : start + limit]]
        h.send_json(200, job_list_body(data, has_more=start + limit < len(ids)))

    stub.route("GET", "/v1/tunings.list", page)
    first = client.tunings.list(limit=3, status="succeeded")
    assert [j.id for j in first.data] == ids[:3] and first.has_more
    assert len(stub.requests) == 1  # the first page only, until iterated
    assert [j.id for j in first] == ids
    queries = [r.query for r in stub.calls("GET", "/v1/tunings.list")]
    assert [q.get("after") for q in queries] == [None, ["ftjob-05"], ["ftjob-02"]]
    assert all(q["status"] == ["succeeded"] and q["limit"] == ["3"] for q in queries)
    assert [len(p.data) for p in client.tunings.list(limit=3).iter_pages()] == [3, 3, 1]


class JobOverTime:
    """A job that advances one step per GET; optionally with a live stream of its records."""

    def __init__(self, stub: StubServer, steps: int, stream: bool) -> None:
        self.steps = steps
        self.step = -1
        self.gets = 0
        self.stream_ready = threading.Event()
        stub.route("GET", "/v1/tunings.get/", self.get)
        stub.route("GET", "/v1/tunings.logs/", self.logs if stream else reply(200, log_page([])))

    def _job(self) -> dict[str, Any]:
        if self.step < 0:
            return job_body(status="queued")
        metrics = metrics_body(
            progress=self.step / self.steps,
            current_step=self.step,
            total_steps=self.steps,
            current_epoch=1,
            total_epochs=1,
            train_loss=2.0 - self.step * 0.1,
        )
        status = "succeeded" if self.step >= self.steps else "running"
        return job_body(status=status, metrics=metrics, duration=1.5 if status == "succeeded" else None)

    def get(self, h: Handler, req: Recorded) -> None:
        self.gets += 1
        h.send_json(200, self._job())

    def logs(self, h: Handler, req: Recorded) -> None:
        h.start_stream()
        for seq in range(1, self.steps + 2):
            self.step = seq - 1
            if seq == self.steps + 1:
                rec = record(seq, "status", status="succeeded", message="training completed")
            else:
                rec = record(seq, "metrics", step=seq - 1)
            h.chunk(f"id: {seq}\nevent: {rec['type']}\ndata: {json.dumps(rec)}\n\n")
            time.sleep(0.3)  # slower than MIN_REFRESH_INTERVAL: each record is seen
        h.end_stream()


def test_wait_follows_the_stream_and_reports_progress(stub: StubServer, client: TuningClient) -> None:
    JobOverTime(stub, steps=4, stream=True)
    seen: list[float] = []
    job = client.tunings.wait(
        "ftjob-1", on_progress=lambda j: seen.append(j.metrics.progress), poll_interval=60
    )
    assert job.is_successful and job.duration == 1.5
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0]  # every change once, none repeated
    assert stub.calls("GET", "/v1/tunings.logs/")[0].query["follow"] == ["true"]


def test_wait_falls_back_to_polling(stub: StubServer, client: TuningClient, sleeps: list[float]) -> None:
    # The logs endpoint answers JSON, not an event stream: wait polls instead.
    JobOverTime(stub, steps=3, stream=False)
    original_get = stub.routes[("GET", "/v1/tunings.get/")][0]

    def advancing(h: Handler, req: Recorded) -> None:
        job.step += 1
        original_get(h, req)

    job = stub.routes[("GET", "/v1/tunings.get/")][0].__self__  # type: ignore[attr-defined]
    stub.route("GET", "/v1/tunings.get/", advancing)
    seen: list[int] = []
    final = client.tunings.wait(
        "ftjob-1", on_progress=lambda j: seen.append(j.metrics.current_step), poll_interval=0.7
    )
    assert final.is_successful
    assert seen == [0, 1, 2, 3]
    assert set(sleeps) == {0.7}


def test_wait_returns_failed_jobs_and_times_out(stub: StubServer, client: TuningClient, monkeypatch) -> None:
    stub.route(
        "GET",
        "/v1/tunings.get/",
        reply(200, job_body(status="failed", error=job_error_body("trainer_crashed", "bad"))),
    )
    failed = client.tunings.wait("ftjob-1")
    assert not failed.is_successful and failed.error is not None and failed.error.message == "bad"

    stub.route("GET", "/v1/tunings.get/", reply(200, job_body(status="running")))

    def silent_stream(h: Handler, req: Recorded) -> None:
        h.start_stream()
        time.sleep(1.0)
        h.end_stream()

    stub.route("GET", "/v1/tunings.logs/", silent_stream)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeoutError) as info:
        client.tunings.wait("ftjob-1", timeout=0.4)
    assert time.monotonic() - t0 < 0.9  # the blocked read is bounded by the deadline
    assert info.value.job.status == "running"


def test_wait_on_progress_only_on_change(stub: StubServer, client: TuningClient, sleeps: list[float]) -> None:
    def running(progress: float, step: int, loss: float | None) -> dict[str, Any]:
        return metrics_body(progress=progress, current_step=step, total_steps=4, train_loss=loss)

    jobs = [
        job_body(status="running"),
        # Started, no step yet: no loss to show, no call.
        job_body(status="running", metrics=running(0.0, 0, None)),
        job_body(status="running", metrics=running(0.5, 2, 1.0)),
        job_body(status="running", metrics=running(0.5, 2, 1.0)),
        job_body(status="succeeded", metrics=running(1.0, 4, 0.5)),
    ]
    stub.route("GET", "/v1/tunings.get/", *[reply(200, j) for j in jobs])
    stub.route("GET", "/v1/tunings.logs/", reply(200, log_page([])))
    calls: list[float] = []
    client.tunings.wait("ftjob-1", on_progress=lambda j: calls.append(j.metrics.progress))
    assert calls == [0.5, 1.0]
    assert tunings.DEFAULT_POLL_INTERVAL in sleeps

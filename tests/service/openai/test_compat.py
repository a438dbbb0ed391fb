"""The OpenAI-compatible surface, driven by the official `openai` package against a real server.

API behaviour (files, jobs, pagination, filters, errors) runs on `api_service` (no trainers: jobs stay
queued); real training through the same surface (a job to `succeeded` with events and checkpoints,
pause/resume from the checkpoint step) runs on the session's `live_service` with the tiny model. Pure mapping
rules are unit tested at the end.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.service.files_support import BAD_JSONL, GOOD_JSONL
from tests.support.server import DEV_KEY, OTHER_KEY, ServiceProcess
from tuning_service.errors import APIError
from tuning_service.openai import compat as oc
from tuning_service.schema.jobs import CreateTuningRequest
from tuning_service.schema.openai import OpenAICreateJob
from tuning_trainer.config import Hyperparameters

SHORT = {"n_epochs": 1, "batch_size": 4, "max_seq_length": 64, "logging_steps": 1}


def client(svc: ServiceProcess, key: str = DEV_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{svc.base_url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def api(api_service: ServiceProcess) -> openai.OpenAI:
    return client(api_service)


@pytest.fixture(scope="module")
def train_file(api: openai.OpenAI) -> Any:
    return api.files.create(file=("train.jsonl", GOOD_JSONL), purpose="fine-tune")


# ---- files -------------------------------------------------------------------------------------------------


def test_files_create_retrieve_list_content_delete(api_service: ServiceProcess) -> None:
    c = client(api_service, api_service.new_key("oa-files"))
    f = c.files.create(file=("train.jsonl", GOOD_JSONL), purpose="fine-tune")
    assert f.object == "file" and f.id.startswith("file-")
    assert f.status == "processed" and f.purpose == "fine-tune" and f.bytes == len(GOOD_JSONL)
    assert f.filename == "train.jsonl"
    assert c.files.retrieve(f.id).id == f.id
    g = c.files.create(file=("more.jsonl", GOOD_JSONL), purpose="fine-tune")
    assert [x.id for x in c.files.list()] == [g.id, f.id]
    # Auto-pagination across pages of one.
    assert [x.id for x in c.files.list(limit=1)] == [g.id, f.id]
    assert c.files.content(f.id).read() == GOOD_JSONL
    deleted = c.files.delete(f.id)
    assert deleted.deleted is True and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)
    # The same file through the native surface.
    assert api_service.get(f"/v1/files.get/{g.id}", key=c.api_key).json()["id"] == g.id


def test_a_bad_file_is_stored_with_its_error_and_refused_by_jobs_create(api: openai.OpenAI) -> None:
    bad = api.files.create(file=("bad.jsonl", BAD_JSONL), purpose="fine-tune")
    assert bad.status == "error"
    assert bad.status_details and "line 2" in bad.status_details
    with pytest.raises(openai.BadRequestError) as info:
        api.fine_tuning.jobs.create(model="tiny-llama", training_file=bad.id)
    err = info.value
    assert err.status_code == 400
    assert err.code == "file_invalid" and err.param == "training_file"
    assert "line 2" in err.message and bad.id in err.message
    assert isinstance(err.body, dict) and err.body["line"] == 2


def test_files_create_with_another_purpose_is_a_bad_request(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        api.files.create(file=("x.jsonl", GOOD_JSONL), purpose="assistants")
    assert info.value.param == "purpose" and "fine-tune" in info.value.message


def test_files_list_refuses_ascending_order(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        api.files.list(order="asc")
    assert info.value.param == "order"


# ---- jobs ----------------------------------------------------------------------------------------------


def test_jobs_create_maps_openai_fields(
    api_service: ServiceProcess, api: openai.OpenAI, train_file: Any
) -> None:
    job = api.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=train_file.id,
        validation_file=train_file.id,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5},
        suffix="my-model",
        seed=7,
        metadata={"team": "search"},
    )
    assert job.object == "fine_tuning.job" and job.id.startswith("ftjob-")
    assert job.status == "queued"
    assert job.model == "tiny-llama"
    assert job.training_file == job.validation_file == train_file.id
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(0.5)
    assert job.method is not None and job.method.type == "supervised"
    assert job.seed == 7 and job.metadata == {"team": "search"}
    assert job.fine_tuned_model is None and job.error is None and job.result_files == []
    assert job.organization_id.startswith("key_")
    # The same job through the native API, with our names: 0.5 x the default 2e-4.
    native = api.fine_tuning.jobs.retrieve(job.id)
    assert native.id == job.id
    got = api_service.get(f"/v1/tunings.get/{job.id}").json()
    assert got["hyperparameters"]["learning_rate"] == pytest.approx(1e-4)
    assert got["hyperparameters"]["epochs"] == 2
    assert (got["method"], got["adapter"]) == ("sft", "qlora") and got["suffix"] == "my-model"
    api.fine_tuning.jobs.cancel(job.id)


def test_method_supervised_hyperparameters_and_extensions(api: openai.OpenAI, train_file: Any) -> None:
    job = api.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=train_file.id,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": "auto", "max_steps": 9}},
        },
        extra_body={"tuning_method": "lora"},
    )
    assert job.hyperparameters.n_epochs == "auto"
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(1.0)
    assert job.tuning["adapter"] == "lora"  # type: ignore[attr-defined]
    api.fine_tuning.jobs.cancel(job.id)


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"method": {"type": "reinforcement"}}, "method.type", "unsupported_method"),
        (
            {"integrations": [{"type": "wandb", "wandb": {"project": "p", "tags": ["x" * 65]}}]},
            "integrations.0.wandb.tags.0",
            "invalid_value",
        ),
        ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs", "invalid_hyperparameter"),
        (
            {"hyperparameters": {"learning_rate_multiplier": -1}},
            "hyperparameters.learning_rate_multiplier",
            None,
        ),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "invalid_hyperparameter"),
        ({"hyperparameters": {"warmup": 1}}, "hyperparameters.warmup", "invalid_hyperparameter"),
        ({"suffix": "bad suffix!"}, "suffix", "invalid_value"),
        ({"extra_body": {"nonsense": 1}}, "nonsense", "invalid_request"),
        ({"model": "../etc"}, "model", "invalid_value"),
    ],
)
def test_invalid_creates_are_bad_requests_naming_the_field(
    api: openai.OpenAI, train_file: Any, kwargs: dict[str, Any], param: str, code: str | None
) -> None:
    args: dict[str, Any] = {"model": "tiny-llama", "training_file": train_file.id, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        api.fine_tuning.jobs.create(**args)
    assert info.value.param == param
    if code:
        assert info.value.code == code
    assert info.value.message
    if "method" in kwargs:
        assert "supervised" in info.value.message  # names what is supported


def test_unknown_and_another_keys_ids_are_not_found(api_service: ServiceProcess, api: openai.OpenAI) -> None:
    theirs = client(api_service, OTHER_KEY)
    job = theirs.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=theirs.files.create(file=("t.jsonl", GOOD_JSONL), purpose="fine-tune").id,
    )
    for job_id in (job.id, "ftjob-" + "0" * 24):
        with pytest.raises(openai.NotFoundError) as info:
            api.fine_tuning.jobs.retrieve(job_id)
        assert info.value.code == "job_not_found"
        with pytest.raises(openai.NotFoundError):
            api.fine_tuning.jobs.cancel(job_id)
        with pytest.raises(openai.NotFoundError):
            api.fine_tuning.jobs.list_events(job_id)
    with pytest.raises(openai.NotFoundError):
        api.fine_tuning.jobs.create(model="tiny-llama", training_file="file-" + "0" * 24)
    theirs.fine_tuning.jobs.cancel(job.id)


def test_list_auto_paginates_and_filters_by_metadata(api_service: ServiceProcess) -> None:
    c = client(api_service, api_service.new_key("oa-list"))
    f = c.files.create(file=("t.jsonl", GOOD_JSONL), purpose="fine-tune")
    made = [
        c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, metadata={"run": str(i % 2)}).id
        for i in range(5)
    ]
    page = c.fine_tuning.jobs.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    assert [j.id for j in c.fine_tuning.jobs.list(limit=2)] == made[::-1]  # every page, newest first
    odd = [j.id for j in c.fine_tuning.jobs.list(limit=1, metadata={"run": "1"})]
    assert odd == [made[3], made[1]]
    assert [j.id for j in c.fine_tuning.jobs.list(metadata={"run": "nope"})] == []
    # Jobs made through the native API are listed here too, and the other way round.
    native = api_service.create_job(key=c.api_key)
    assert c.fine_tuning.jobs.list(limit=1).data[0].id == native["id"]
    native_ids = {
        j["id"] for j in api_service.get("/v1/tunings.list?limit=100", key=c.api_key).json()["data"]
    }
    assert set(made) <= native_ids
    for job_id in [*made, native["id"]]:
        c.fine_tuning.jobs.cancel(job_id)


def test_cancel_pause_resume_of_queued_jobs(api: openai.OpenAI, train_file: Any) -> None:
    job = api.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id)
    assert api.fine_tuning.jobs.pause(job.id).status == "paused"
    with pytest.raises(openai.ConflictError) as info:
        api.fine_tuning.jobs.pause(job.id)
    assert info.value.code == "job_not_pausable"
    assert api.fine_tuning.jobs.resume(job.id).status == "queued"  # paused before it ran: from the start
    cancelled = api.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.ConflictError) as info:
        api.fine_tuning.jobs.cancel(job.id)
    assert info.value.code == "job_terminal"
    with pytest.raises(openai.ConflictError) as info:
        api.fine_tuning.jobs.resume(job.id)
    assert info.value.code == "no_checkpoint"  # never ran: nothing to continue from
    assert list(api.fine_tuning.jobs.checkpoints.list(job.id)) == []


def test_events_are_newest_first_and_paginate(api: openai.OpenAI, train_file: Any) -> None:
    job = api.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id)
    api.fine_tuning.jobs.pause(job.id)
    api.fine_tuning.jobs.resume(job.id)
    api.fine_tuning.jobs.cancel(job.id)
    events = list(api.fine_tuning.jobs.list_events(job.id, limit=2))
    assert [e.data["status"] for e in events] == ["cancelled", "queued", "paused", "queued"]  # type: ignore[index]
    assert all(e.object == "fine_tuning.job.event" and e.level == "info" for e in events)
    assert "paused" in events[2].message
    assert len({e.id for e in events}) == 4
    with pytest.raises(openai.BadRequestError) as info:
        api.fine_tuning.jobs.list_events(job.id, after="ftevent-bogus")
    assert info.value.param == "after"


# ---- real training through the OpenAI surface -------------------------------------------------------------


def _wait(c: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    job = c.fine_tuning.jobs.retrieve(job_id)
    while time.monotonic() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {job.status}, wanted {statuses}: {job}")


@pytest.fixture(scope="module")
def live(live_service: ServiceProcess) -> openai.OpenAI:
    return client(live_service, live_service.new_key("openai-live"))


@pytest.fixture(scope="module")
def live_file(live: openai.OpenAI, service_env: Any) -> Any:
    data = (service_env.files_root / "data" / "train.jsonl").read_bytes()
    return live.files.create(file=("train.jsonl", data), purpose="fine-tune")


@pytest.mark.slow
def test_a_job_trains_to_succeeded_with_events_and_checkpoints(live: openai.OpenAI, live_file: Any) -> None:
    job = live.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=live_file.id,
        hyperparameters={**SHORT, "max_steps": 12, "save_steps": 4},
        suffix="oa",
        extra_body={"tuning_method": "lora"},
    )
    done = _wait(live, job.id, {"succeeded"})
    assert done.fine_tuned_model == f"ft:tiny-llama:{done.organization_id}:oa:{job.id}"
    assert done.finished_at and done.trained_tokens and done.trained_tokens > 0
    assert done.hyperparameters.batch_size == 4 and done.hyperparameters.n_epochs == 1
    events = list(live.fine_tuning.jobs.list_events(job.id, limit=5))
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) >= 12
    assert all(isinstance(e.data["train_loss"], float) for e in metrics if "train_loss" in e.data)  # type: ignore[operator,index]
    assert events[0].data["status"] == "succeeded"  # type: ignore[index]
    assert any(e.message.startswith("Training started") for e in events)
    ckpts = list(live.fine_tuning.jobs.checkpoints.list(job.id, limit=2))
    assert [c.step_number for c in ckpts] == [8, 4]  # the last step is the final adapter, not a checkpoint
    first = ckpts[0]
    assert first.object == "fine_tuning.job.checkpoint" and first.fine_tuning_job_id == job.id
    assert first.fine_tuned_model_checkpoint.endswith(f"{job.id}:ckpt-step-8")
    assert isinstance(first.metrics.train_loss, float) and first.metrics.step == 8


@pytest.mark.slow
def test_pause_and_resume_continue_from_the_checkpoint_step(
    live: openai.OpenAI, live_file: Any, live_service: ServiceProcess
) -> None:
    # Never finishes by itself: the resumed run is checked, then cancelled (keeps the suite fast).
    job = live.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=live_file.id,
        hyperparameters={**SHORT, "n_epochs": 1000, "max_steps": 100000},
        extra_body={"tuning_method": "lora"},
    )
    try:
        _wait_for_step(live, job.id, 2)
        live.fine_tuning.jobs.pause(job.id)
        paused = _wait(live, job.id, {"paused"}, timeout=90)
        assert paused.finished_at is None and paused.error is None
        ckpts = list(live.fine_tuning.jobs.checkpoints.list(job.id))
        assert ckpts, "a paused job has a checkpoint"
        step = ckpts[0].step_number
        assert step >= 2
        assert live.fine_tuning.jobs.resume(job.id).status == "queued"
        records = _wait_for_resumed_steps(live_service, live.api_key, job.id)
        started = [r for r in records if r["type"] == "started"]
        assert len(started) == 2
        assert started[1]["start_step"] == step > 0
        assert started[0]["total_steps"] == started[1]["total_steps"]
        # The resumed run's first step follows the checkpoint: nothing is re-trained from 0.
        second_run = [r["step"] for r in records if r["type"] == "metrics" and r["seq"] > started[1]["seq"]]
        assert second_run[0] == step + 1
        statuses = [r["status"] for r in records if r["type"] == "status"]
        assert statuses == ["queued", "running", "pausing", "paused", "queued", "running"]
        assert any(
            e.message.startswith(f"Training resumed at step {step}")
            for e in live.fine_tuning.jobs.list_events(job.id)
        )
    finally:
        if live.fine_tuning.jobs.retrieve(job.id).status not in ("succeeded", "failed", "cancelled"):
            live.fine_tuning.jobs.cancel(job.id)
            _wait(live, job.id, {"cancelled"}, timeout=90)


def _wait_for_step(c: openai.OpenAI, job_id: str, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = c.fine_tuning.jobs.retrieve(job_id)
        if ((j.tuning or {}).get("metrics") or {}).get("current_step", 0) >= step:  # type: ignore[attr-defined]
            return
        assert j.status in ("queued", "running"), j
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached step {step}")


def _wait_for_resumed_steps(svc: ServiceProcess, key: str, job_id: str, timeout: float = 240) -> list[Any]:
    """The job's records once the resumed run (the second `started`) has reported two steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = svc.get(f"/v1/tunings.events/{job_id}?limit=1000", key=key).json()["data"]
        started = [r["seq"] for r in records if r["type"] == "started"]
        if len(started) == 2 and sum(r["type"] == "metrics" and r["seq"] > started[1] for r in records) >= 2:
            return list(records)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: the resumed run never reported steps")


# ---- mapping rules -----------------------------------------------------------------------------------------


def test_an_openai_create_is_the_same_native_job() -> None:
    def native(body: dict[str, Any]) -> dict[str, Any]:
        return (
            OpenAICreateJob.model_validate({"model": "m", "training_file": "f", **body})
            .to_native()
            .normalised()
        )

    defaults = Hyperparameters().model_dump()
    base = native({})
    assert base == CreateTuningRequest.model_validate({"model": "m", "training_file": "f"}).normalised()
    # The multiplier scales the default learning rate; "auto" is the default.
    hp = native({"hyperparameters": {"learning_rate_multiplier": 2}})["hyperparameters"]
    assert hp == {**defaults, "learning_rate": pytest.approx(4e-4)}
    assert native({"hyperparameters": {"learning_rate_multiplier": "auto"}}) == base
    # n_epochs is epochs; method.supervised.hyperparameters add to (and win over) the top-level ones; our
    # own hyperparameter names and tuning_method are extensions.
    job = native(
        {
            "hyperparameters": {"n_epochs": 3, "lora_r": 4},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
            "tuning_method": "lora",
        }
    )
    assert job["hyperparameters"] == {**defaults, "epochs": 2, "lora_r": 4} and job["adapter"] == "lora"


def test_statuses_map_to_openais() -> None:
    assert oc.STATUS["cancelling"] == oc.STATUS["pausing"] == "running"
    assert oc.STATUS["validating"] == "validating_files"
    assert oc.STATUS["paused"] == "paused"


def test_invalid_values_become_400() -> None:
    err = oc.openai_error(APIError(422, "file_not_found", "bad", param="training_file", extra={"line": None}))
    assert (err.status_code, err.code, err.param, err.extra) == (
        400,
        "file_not_found",
        "training_file",
        {"line": None},
    )
    assert oc.openai_error(APIError(404, "job_not_found", "x", param="id")).status_code == 404

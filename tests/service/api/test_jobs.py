"""The job endpoints over real HTTP: create, get, list, cancel, delete, logs pages, isolation between keys,
pagination, idempotency, health and the cross-cutting behaviour (request ids, unknown routes).

One real service for the module (`api_service`, tests/conftest.py) that runs no trainers: jobs stay queued.
Tests that need an owner with no jobs create a key with the CLI (`svc.new_key`).
"""

from __future__ import annotations

import time

import pytest

from tests.support.server import DEV_KEY, OTHER_KEY, ServiceProcess

JOB_FIELDS = {
    "id", "object", "status", "model", "fine_tuned_model", "adapter_path", "training_file", "validation_file",
    "method", "hyperparameters", "suffix", "seed", "metadata", "created_at", "started_at", "finished_at",
    "duration", "queue_position", "trained_tokens", "error", "metrics",
}  # fmt: skip


# ---- create / get ------------------------------------------------------------------------------------------


def test_create_returns_the_queued_job_in_the_documented_shape(api_service: ServiceProcess) -> None:
    r = api_service.post(
        "/v1/tunings.create",
        {"model": "tiny-llama", "training_file": "data/train.jsonl", "hyperparameters": {"epochs": 2}},
    )
    assert r.status == 200, r.text
    job = r.json()
    assert set(job) >= JOB_FIELDS
    assert job["id"].startswith("ftjob-")
    assert job["object"] == "tuning.job"
    assert job["status"] == "queued"
    assert job["model"] == "tiny-llama"
    assert job["training_file"] == "data/train.jsonl"
    assert job["validation_file"] is None
    assert (job["method"], job["adapter"], job["from_checkpoint"]) == ("sft", "qlora", None)
    assert job["seed"] == 42
    assert job["metadata"] == {}
    assert isinstance(job["created_at"], int)
    assert job["started_at"] is None and job["finished_at"] is None and job["duration"] is None
    assert isinstance(job["queue_position"], int) and job["queue_position"] >= 1
    assert job["error"] is None and job["metrics"] is None and job["fine_tuned_model"] is None
    # Requested values with the trainer's defaults filled in; "auto" stays until the trainer resolves it.
    hp = job["hyperparameters"]
    assert hp["epochs"] == 2
    assert hp["batch_size"] == "auto"
    assert hp["learning_rate"] == pytest.approx(2e-4)
    assert r.headers["content-type"].startswith("application/json")


def test_create_keeps_every_optional_field(api_service: ServiceProcess) -> None:
    job = api_service.create_job(
        model="org/some-model",
        training_file="./data//train.jsonl",
        validation_file="data/valid.jsonl",
        method="lora",
        suffix="my-run_1.0",
        seed=7,
        metadata={"team": "search", "ticket": "ML-42"},
        hyperparameters={"learning_rate": 1e-3, "batch_size": 2, "lora_r": 8, "max_steps": 5},
    )
    assert job["model"] == "org/some-model"
    assert job["training_file"] == "data/train.jsonl"  # normalised, still relative
    assert job["validation_file"] == "data/valid.jsonl"
    assert (job["method"], job["adapter"]) == ("sft", "lora")  # "lora": the method's meaning before DPO
    assert job["suffix"] == "my-run_1.0"
    assert job["seed"] == 7
    assert job["metadata"] == {"team": "search", "ticket": "ML-42"}
    assert job["hyperparameters"]["lora_r"] == 8
    assert job["hyperparameters"]["max_steps"] == 5


def test_get_returns_the_job(api_service: ServiceProcess) -> None:
    job = api_service.create_job()
    r = api_service.get(f"/v1/tunings.get/{job['id']}")
    assert r.status == 200
    got = r.json()
    assert got["id"] == job["id"]
    assert got["status"] == "queued"
    assert got["training_file"] == job["training_file"]


@pytest.mark.parametrize("job_id", ["ftjob-000000000000000000000000", "nope", "a" * 300, "ftjob-%2e%2e"])
def test_get_unknown_id_is_404_job_not_found(api_service: ServiceProcess, job_id: str) -> None:
    r = api_service.get(f"/v1/tunings.get/{job_id}")
    assert r.status == 404
    assert r.error["code"] == "job_not_found"
    assert r.error["type"] == "not_found_error"
    assert r.error["param"] == "id"


def test_queue_positions_count_up_in_creation_order(api_service: ServiceProcess) -> None:
    key = api_service.new_key("queue-positions")
    a = api_service.create_job(key=key)
    b = api_service.create_job(key=key)
    assert b["queue_position"] == a["queue_position"] + 1
    api_service.post(f"/v1/tunings.cancel/{a['id']}", key=key)
    # b moves up once a is no longer queued.
    assert (
        api_service.get(f"/v1/tunings.get/{b['id']}", key=key).json()["queue_position"] == a["queue_position"]
    )
    api_service.post(f"/v1/tunings.cancel/{b['id']}", key=key)


# ---- isolation between keys --------------------------------------------------------------------------------


ROUTES = [
    ("GET", "/v1/tunings.get/{id}"),
    ("POST", "/v1/tunings.cancel/{id}"),
    ("DELETE", "/v1/tunings.delete/{id}"),
    ("GET", "/v1/tunings.logs/{id}"),
    ("GET", "/v1/tunings.logs/{id}?follow=true"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_another_keys_job_is_indistinguishable_from_an_unknown_id(
    api_service: ServiceProcess, method: str, path: str
) -> None:
    job = api_service.create_job(key=DEV_KEY)
    unknown = "ftjob-" + "0" * 24
    theirs = api_service.request(method, path.format(id=job["id"]), key=OTHER_KEY)
    missing = api_service.request(method, path.format(id=unknown), key=OTHER_KEY)
    assert theirs.status == missing.status == 404
    assert theirs.json() == {
        "error": {**missing.error, "message": missing.error["message"].replace(unknown, job["id"])}
    }
    # ...and the owner's job is untouched by the other key's attempt.
    assert api_service.get(f"/v1/tunings.get/{job['id']}").json()["status"] == "queued"


def test_list_shows_only_the_callers_jobs(api_service: ServiceProcess) -> None:
    mine = api_service.create_job(key=DEV_KEY)
    theirs = api_service.create_job(key=OTHER_KEY)
    ids_1 = {j["id"] for j in api_service.get("/v1/tunings.list?limit=100", key=DEV_KEY).json()["data"]}
    ids_2 = {j["id"] for j in api_service.get("/v1/tunings.list?limit=100", key=OTHER_KEY).json()["data"]}
    assert mine["id"] in ids_1 and mine["id"] not in ids_2
    assert theirs["id"] in ids_2 and theirs["id"] not in ids_1


# ---- list: pagination and filters --------------------------------------------------------------------------


def test_list_paginates_newest_first_with_a_cursor(api_service: ServiceProcess) -> None:
    key = api_service.new_key("pagination")
    created = [api_service.create_job(key=key)["id"] for _ in range(5)]
    newest_first = created[::-1]

    page1 = api_service.get("/v1/tunings.list?limit=2", key=key).json()
    assert page1["object"] == "list"
    assert [j["id"] for j in page1["data"]] == newest_first[:2]
    assert page1["has_more"] is True
    assert page1["first_id"] == newest_first[0] and page1["last_id"] == newest_first[1]

    page2 = api_service.get(f"/v1/tunings.list?limit=2&after={page1['last_id']}", key=key).json()
    assert [j["id"] for j in page2["data"]] == newest_first[2:4]
    assert page2["has_more"] is True

    page3 = api_service.get(f"/v1/tunings.list?limit=2&after={page2['last_id']}", key=key).json()
    assert [j["id"] for j in page3["data"]] == newest_first[4:]
    assert page3["has_more"] is False

    everything = api_service.get("/v1/tunings.list", key=key).json()
    assert [j["id"] for j in everything["data"]] == newest_first
    assert everything["has_more"] is False


def test_list_filters_by_status(api_service: ServiceProcess) -> None:
    key = api_service.new_key("status-filter")
    ids = [api_service.create_job(key=key)["id"] for _ in range(3)]
    api_service.post(f"/v1/tunings.cancel/{ids[0]}", key=key)
    cancelled = api_service.get("/v1/tunings.list?status=cancelled", key=key).json()
    queued = api_service.get("/v1/tunings.list?status=queued", key=key).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    assert [j["id"] for j in queued["data"]] == [ids[2], ids[1]]
    assert api_service.get("/v1/tunings.list?status=succeeded", key=key).json()["data"] == []


def test_list_of_a_key_without_jobs_is_empty(api_service: ServiceProcess) -> None:
    key = api_service.new_key("empty")
    body = api_service.get("/v1/tunings.list", key=key).json()
    assert body == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("status=done", "status"),
    ],
)
def test_list_rejects_bad_query_parameters(api_service: ServiceProcess, query: str, param: str) -> None:
    r = api_service.get(f"/v1/tunings.list?{query}")
    assert r.status == 400
    assert r.error["code"] == "invalid_request"
    assert r.error["param"] == param


# ---- cancel / delete ---------------------------------------------------------------------------------------


def test_cancel_a_queued_job_is_immediate_and_final(api_service: ServiceProcess) -> None:
    job = api_service.create_job()
    r = api_service.post(f"/v1/tunings.cancel/{job['id']}")
    assert r.status == 200
    cancelled = r.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert cancelled["queue_position"] is None
    again = api_service.post(f"/v1/tunings.cancel/{job['id']}")
    assert again.status == 409
    assert again.error["code"] == "job_terminal"
    assert "cancelled" in again.error["message"]


def test_delete_refuses_unfinished_jobs_and_removes_finished_ones(api_service: ServiceProcess) -> None:
    job = api_service.create_job()
    r = api_service.delete(f"/v1/tunings.delete/{job['id']}")
    assert r.status == 409
    assert r.error["code"] == "job_not_terminal"
    assert api_service.get(f"/v1/tunings.get/{job['id']}").status == 200  # nothing lost

    api_service.post(f"/v1/tunings.cancel/{job['id']}")
    r = api_service.delete(f"/v1/tunings.delete/{job['id']}")
    assert r.status == 200
    assert r.json() == {"id": job["id"], "object": "tuning.job", "deleted": True}
    assert api_service.get(f"/v1/tunings.get/{job['id']}").status == 404
    assert api_service.get(f"/v1/tunings.logs/{job['id']}").status == 404
    assert not (api_service.data_dir / "jobs" / job["id"]).exists()
    assert api_service.delete(f"/v1/tunings.delete/{job['id']}").status == 404


def test_wrong_methods_are_405_in_the_error_shape(api_service: ServiceProcess) -> None:
    r = api_service.request("GET", "/v1/tunings.cancel/ftjob-x")
    assert r.status == 405
    assert r.error["code"] == "method_not_allowed"
    r = api_service.request("POST", "/v1/tunings.delete/ftjob-x")
    assert r.status == 405


# ---- idempotency -------------------------------------------------------------------------------------------


def test_idempotency_key_returns_the_same_job_for_the_same_body(api_service: ServiceProcess) -> None:
    key = api_service.new_key("idempotency")
    body = {"model": "tiny-llama", "training_file": "data/train.jsonl", "hyperparameters": {"epochs": 1}}
    headers = {"Idempotency-Key": "req-123"}
    first = api_service.post("/v1/tunings.create", body, key=key, headers=headers)
    second = api_service.post("/v1/tunings.create", body, key=key, headers=headers)
    assert first.status == second.status == 200
    assert first.json()["id"] == second.json()["id"]
    assert first.headers.get("idempotent-replayed") == "false"
    assert second.headers.get("idempotent-replayed") == "true"
    assert len(api_service.get("/v1/tunings.list", key=key).json()["data"]) == 1

    changed = api_service.post(
        "/v1/tunings.create", {**body, "hyperparameters": {"epochs": 2}}, key=key, headers=headers
    )
    assert changed.status == 409
    assert changed.error["code"] == "idempotency_key_reused"
    assert changed.error["param"] == "Idempotency-Key"
    assert len(api_service.get("/v1/tunings.list", key=key).json()["data"]) == 1


def test_idempotency_keys_are_scoped_per_api_key(api_service: ServiceProcess) -> None:
    body = {"model": "tiny-llama", "training_file": "data/train.jsonl"}
    headers = {"Idempotency-Key": "shared-name"}
    a = api_service.post("/v1/tunings.create", body, key=DEV_KEY, headers=headers).json()
    b = api_service.post("/v1/tunings.create", body, key=OTHER_KEY, headers=headers).json()
    assert a["id"] != b["id"]


def test_without_an_idempotency_key_each_create_is_a_new_job(api_service: ServiceProcess) -> None:
    a = api_service.create_job()
    b = api_service.create_job()
    assert a["id"] != b["id"]


def test_an_oversized_idempotency_key_is_refused(api_service: ServiceProcess) -> None:
    r = api_service.post(
        "/v1/tunings.create",
        {"model": "tiny-llama", "training_file": "data/train.jsonl"},
        headers={"Idempotency-Key": "k" * 300},
    )
    assert r.status == 400
    assert r.error["param"] == "Idempotency-Key"


# ---- logs (JSON pages) -------------------------------------------------------------------------------------


def test_logs_page_lists_the_jobs_records_in_order(api_service: ServiceProcess) -> None:
    job = api_service.create_job()
    api_service.post(f"/v1/tunings.cancel/{job['id']}")
    page = api_service.get(f"/v1/tunings.logs/{job['id']}").json()
    assert page["object"] == "list"
    records = page["data"]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert all({"seq", "type", "time"} <= set(r) for r in records)
    statuses = [r["status"] for r in records if r["type"] == "status"]
    assert statuses[-1] == "cancelled"
    assert page["last_seq"] == records[-1]["seq"]
    assert page["has_more"] is False

    first = api_service.get(f"/v1/tunings.logs/{job['id']}?limit=1").json()
    assert len(first["data"]) == 1 and first["has_more"] is True and first["last_seq"] == 1
    rest = api_service.get(f"/v1/tunings.logs/{job['id']}?after=1").json()
    assert [r["seq"] for r in rest["data"]] == [r["seq"] for r in records[1:]]
    past_end = api_service.get(f"/v1/tunings.logs/{job['id']}?after=999").json()
    assert past_end["data"] == [] and past_end["last_seq"] == 999


@pytest.mark.parametrize("query", ["after=-1", "after=x", "limit=0", "limit=1001", "follow=maybe"])
def test_logs_rejects_bad_query_parameters(api_service: ServiceProcess, query: str) -> None:
    job = api_service.create_job()
    r = api_service.get(f"/v1/tunings.logs/{job['id']}?{query}")
    assert r.status == 400
    assert r.error["param"] == query.split("=")[0]


# ---- health, request ids, unknown routes -------------------------------------------------------------------


def test_health_needs_no_key_and_counts_jobs(api_service: ServiceProcess) -> None:
    before = api_service.get("/health", key=None).json()
    assert before["status"] == "healthy"
    assert isinstance(before["version"], str) and before["version"]
    assert before["uptime"] >= 0
    api_service.create_job()
    after = api_service.get("/health", key=None).json()
    assert after["total_jobs"] == before["total_jobs"] + 1
    assert after["active_jobs"] == before["active_jobs"] + 1  # queued counts as active work
    assert after["uptime"] >= before["uptime"]


def test_request_id_is_echoed_or_generated(api_service: ServiceProcess) -> None:
    r = api_service.get("/health", headers={"X-Request-ID": "trace-abc.123"})
    assert r.headers["x-request-id"] == "trace-abc.123"
    generated = api_service.get("/health").headers["x-request-id"]
    assert len(generated) >= 16
    # Unsafe ids (spaces, over-long) are replaced rather than copied into headers and logs.
    assert api_service.get("/health", headers={"X-Request-ID": "a b"}).headers["x-request-id"] != "a b"
    assert len(api_service.get("/health", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]) < 200
    # Error responses carry it too.
    err = api_service.get("/v1/tunings.get/nope", headers={"X-Request-ID": "err-1"})
    assert err.status == 404 and err.headers["x-request-id"] == "err-1"


def test_unknown_route_is_a_json_404(api_service: ServiceProcess) -> None:
    r = api_service.get("/v1/tunings.nothing")
    assert r.status == 404
    assert r.error["code"] == "not_found"
    assert "/docs" in r.error["message"]


def test_requests_are_logged_with_their_request_id(api_service: ServiceProcess) -> None:
    api_service.get("/v1/tunings.list", headers={"X-Request-ID": "find-me-in-the-log"})
    path = api_service.data_dir / "tuning_service.log"
    deadline = time.monotonic() + 5  # access lines are written in batches (logsink.FLUSH_SECONDS)
    while "find-me-in-the-log" not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    log = path.read_text()
    assert "find-me-in-the-log" in log
    assert "GET /v1/tunings.list 200" in log

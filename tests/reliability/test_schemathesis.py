"""Schemathesis over the service's own OpenAPI document, in-process (ASGI), as part of the suite.

Every operation gets examples from the document plus generated positive and negative data; every response
must be documented (status, content type, headers, body schema: an error's `code` must be one the route
lists), no request may cause a 5xx, negative data must be rejected, a request without credentials must not
be served, and data the document calls valid must never be refused as invalid (400 invalid_request, 422
invalid_value, ...): a refusal of valid-looking data can only come from this server's state (a data file
that does not exist, an idempotency key already used), with a code the document lists for it. The stateful
test follows the document's links (create -> get / cancel / delete / logs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from tests.support.server import DEV_KEY, make_light_files_root
from tuning_service.api.docs import openapi_document, service_version
from tuning_service.app import create_app

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
# Per operation and generation phase; 32 operations. Keeps this file well under 90 s on 2 busy cores.
MAX_EXAMPLES = 15


# The document the service serves at /openapi.json (test_served_document_is_the_one_tested checks that).
# schemathesis's lazy fixture loader does not work under pytest 9, so the schema is built here and the
# requests go in-process to the ASGI app; its lifespan (database, recovery, loops) starts on first use.
APP = create_app()
CONFIG = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"bearerAuth": {"bearer": DEV_KEY}}},
        # Every mode: positive data must be served, negative data refused.
        "generation": {"mode": "all"},
        "checks": {
            "enabled": True,
            # Schema-valid data is never a 422. It may still be refused for what only this server knows:
            # a file or an id that is not there (404), a path that leaves the files root (400 invalid_path:
            # the check below allows no other 400), a webhook address this server's policy refuses (403),
            # an idempotency key used with another body, a key without a webhook secret, a job in the
            # wrong state (409). (A data file whose contents are invalid would be 422: the files root
            # here holds valid files only.)
            # More GPUs than this server has is a 422 too (not_enough_gpus): SERVER_STATE_CODES.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422", "429"]
            },
        },
    }
)
schema = schemathesis.openapi.from_dict(openapi_document(APP.routes, service_version()), config=CONFIG)
schema.app = APP


# The codes that say "this request does not fit the schema": data the document calls valid never gets them.
SCHEMA_CODES = frozenset(
    {"invalid_json", "invalid_request", "invalid_value", "invalid_hyperparameter", "unsupported_method"}
)  # fmt: skip


# 422s that schema-valid data may get: what this server cannot do (a second server could), and a rule
# between two query parameters, which an OpenAPI parameter list cannot state (tunings.download: a checkpoint
# with artifact=tensorboard).
SERVER_STATE_CODES = frozenset({"not_enough_gpus", "checkpoint_not_applicable"})


@schemathesis.check
def valid_data_is_never_refused_as_invalid(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    if case.meta is not None and case.meta.generation.mode.is_positive and response.status_code in (400, 422):
        code = response.json()["error"]["code"]
        if code in SCHEMA_CODES or code not in ("invalid_path", *SERVER_STATE_CODES):
            raise AssertionError(
                f"schema-valid request refused with {response.status_code} {code}: {response.text[:300]}"
            )
    return None


@pytest.fixture(scope="module", autouse=True)
def service_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("schemathesis")
    env = {
        "TUNING_DATA_DIR": str(root / "data"),
        "TUNING_FILES_ROOT": str(make_light_files_root(root / "files")),
        "TUNING_MODELS_DIR": str(root / "models"),
        "TUNING_MAX_CONCURRENT_JOBS": "0",  # jobs stay queued: nothing trains
        "TUNING_RATE_LIMIT_RPS": "0",
        "TUNING_LOG_LEVEL": "WARNING",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    Path(env["TUNING_MODELS_DIR"]).mkdir()
    try:
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Every operation of the document: the job API, files, job actions and the OpenAI-compatible routes.
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case: schemathesis.Case) -> None:
    case.call_and_validate()


# Stateful: schemathesis chains the document's links (a created job -> get / cancel / delete / logs / events
# / checkpoints / pause / resume / download; a created file -> get / content / delete), one machine per
# surface. Files and jobs have an alias on the other surface (`/v1/files.delete/{id}` and
# `/v1/files/{id}`): deleted through one, the other's 404 is correct, but schemathesis's
# "created resource not found" check only knows that a DELETE removes the paths under its own.
_STATEFUL = settings(
    max_examples=10, stateful_step_count=6, deadline=None, suppress_health_check=list(HealthCheck)
)
NativeStateful = schema.exclude(tag="openai").as_state_machine()
NativeStateful.TestCase.settings = _STATEFUL
TestStatefulNative = NativeStateful.TestCase
OpenAIStateful = schema.include(tag="openai").as_state_machine()
OpenAIStateful.TestCase.settings = _STATEFUL
TestStatefulOpenAI = OpenAIStateful.TestCase


def test_served_document_is_the_one_tested() -> None:
    from starlette.testclient import TestClient

    with TestClient(APP) as client:
        served = client.get("/openapi.json").json()
    assert served == openapi_document(APP.routes, service_version())
    create = served["paths"]["/v1/tunings.create"]["post"]["responses"]["200"]
    assert {"GetJob", "CancelJob", "DeleteJob", "GetJobLogs"} <= set(create["links"])


def test_an_enormous_last_event_id_is_a_400_not_a_500() -> None:
    # Found while fuzzing: a resume point beyond SQLite's 64-bit integers used to reach the database.
    from starlette.testclient import TestClient

    with TestClient(APP) as client:
        job = client.post(
            "/v1/tunings.create",
            json={"model": "tiny-llama", "training_file": "data/train.jsonl"},
            headers={"Authorization": f"Bearer {DEV_KEY}"},
        ).json()
        for header in ("9" * 30, str(2**62 + 1)):
            r = client.get(
                f"/v1/tunings.logs/{job['id']}?follow=true",
                headers={"Authorization": f"Bearer {DEV_KEY}", "Last-Event-ID": header},
            )
            assert r.status_code == 400 and r.json()["error"]["param"] == "Last-Event-ID"


# ---- what fuzzing the issue-7 routes found (each fixed in the document or the code) -----------------------

H = {"Authorization": f"Bearer {DEV_KEY}"}
ROW = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture
def client() -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(APP) as c:
        yield c


@pytest.mark.parametrize(
    "url",
    [
        "/v1/files?purpse=fine-tune",
        "/v1/files/file-0123456789abcdef01234567?x=1",
        "/v1/files/file-0123456789abcdef01234567/content?x=1",
        "/v1/fine_tuning/jobs?limt=5",
        "/v1/fine_tuning/jobs/ftjob-x?expand=1",
        "/v1/fine_tuning/jobs/ftjob-x/events?befor=1",
        "/v1/fine_tuning/jobs/ftjob-x/checkpoints?x=",
    ],
)
def test_openai_routes_refuse_unknown_query_parameters_like_the_native_ones(client: Any, url: str) -> None:
    r = client.get(url, headers=H)
    name = url.split("?")[1].split("=")[0]
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == name and name in r.json()["error"]["message"]
    assert client.post("/v1/fine_tuning/jobs/ftjob-x/cancel?force=1", headers=H).json()["error"]["param"] == (
        "force"
    )
    # metadata[KEY] filters are parameters of the list route, not unknown ones.
    assert client.get("/v1/fine_tuning/jobs?metadata[team]=a&limit=2", headers=H).status_code == 200
    # A key may hold brackets (schemathesis sends such keys): metadata[a][b] filters by the key "a][b".
    bracketed = client.get("/v1/fine_tuning/jobs?metadata[a][b]=x", headers=H)
    assert bracketed.status_code == 200 and bracketed.json()["data"] == [], bracketed.text
    # A name that only starts like one is refused, as any unknown parameter.
    near = client.get("/v1/fine_tuning/jobs?metadata=x", headers=H)
    assert near.status_code == 400 and near.json()["error"]["param"] == "metadata", near.text


def test_openai_n_epochs_is_an_integer_as_documented_and_integral_floats_are_integers(client: Any) -> None:
    hp = client.get("/openapi.json").json()["components"]["schemas"]["OpenAIHyperparameters"]
    assert hp["properties"]["n_epochs"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 1000}
    body = {"model": "tiny-llama", "training_file": "data/train.jsonl"}
    integral = {"n_epochs": 2.0, "batch_size": 4.0}
    ok = client.post("/v1/fine_tuning/jobs", json={**body, "hyperparameters": integral}, headers=H)
    assert ok.status_code == 200, ok.text
    assert ok.json()["hyperparameters"]["n_epochs"] == 2 and ok.json()["hyperparameters"]["batch_size"] == 4
    # Every hyperparameter problem has its own code (errors.PROBLEMS), on both surfaces.
    for bad in (2.5, 0.0, True):
        r = client.post(
            "/v1/fine_tuning/jobs", json={**body, "hyperparameters": {"n_epochs": bad}}, headers=H
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "hyperparameters.n_epochs", r.text
        assert r.json()["error"]["code"] == "invalid_hyperparameter"
    both = {"learning_rate": 0.001, "learning_rate_multiplier": "auto"}
    r = client.post("/v1/fine_tuning/jobs", json={**body, "hyperparameters": both}, headers=H)
    assert r.status_code == 400 and r.json()["error"]["param"] == "hyperparameters.learning_rate_multiplier"


def test_openai_event_and_checkpoint_cursors(client: Any) -> None:
    body = {"model": "tiny-llama", "training_file": "data/train.jsonl"}
    job = client.post("/v1/fine_tuning/jobs", json=body, headers=H).json()
    other = client.post("/v1/fine_tuning/jobs", json=body, headers=H).json()
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=H).json()
    assert events["data"] and events["data"][0]["id"].startswith("ftevent-")
    # Another job's (well-formed) event or checkpoint id matches nothing here: an empty page, as for the
    # list routes' cursors; something that is not such an id at all is a malformed request.
    foreign = events["data"][0]["id"].replace(
        job["id"].removeprefix("ftjob-"), other["id"].removeprefix("ftjob-")
    )
    for route, cursor in (("events", foreign), ("checkpoints", f"ftckpt-{other['id'][6:]}-5")):
        r = client.get(f"/v1/fine_tuning/jobs/{job['id']}/{route}", params={"after": cursor}, headers=H)
        assert r.status_code == 200 and r.json()["data"] == [] and r.json()["has_more"] is False, r.text
        r = client.get(f"/v1/fine_tuning/jobs/{job['id']}/{route}", params={"after": "bogus"}, headers=H)
        assert r.status_code == 400 and r.json()["error"]["param"] == "after"
    # An unknown job is still a 404 with another job's cursor.
    r = client.get("/v1/fine_tuning/jobs/ftjob-nope/events", params={"after": foreign}, headers=H)
    assert r.status_code == 404
    # Beyond SQLite's integers is not an event id either (it used to be a 500 risk).
    huge = f"ftevent-{job['id'][6:]}-{'9' * 30}"
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": huge}, headers=H).status_code
        == 400
    )


@pytest.mark.parametrize("path", ["/v1/files", "/v1/files.upload"])
def test_uploads_refuse_unknown_multipart_fields_by_name(client: Any, path: str) -> None:
    files = {"file": ("t.jsonl", ROW, "application/jsonl")}
    r = client.post(path, data={"purpose": "fine-tune", "purpse": "x"}, files=files, headers=H)
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpse", r.text
    ok = client.post(path, data={"purpose": "fine-tune"}, files=files, headers=H)
    assert ok.status_code == 200 and ok.json()["status"] == "processed", ok.text


def test_download_checkpoint_must_be_a_step(client: Any) -> None:
    job = client.post("/v1/tunings.create", json={"model": "tiny-llama", "training_file": "data/train.jsonl"},
                      headers=H).json()  # fmt: skip
    for value in ("", "x", "-1", str(2**31 + 1)):
        r = client.get(f"/v1/tunings.download/{job['id']}", params={"checkpoint": value}, headers=H)
        assert r.status_code == 400 and r.json()["error"]["param"] == "checkpoint", (value, r.text)
    r = client.get(f"/v1/tunings.download/{job['id']}", params={"checkpoint": "3"}, headers=H)
    assert r.status_code == 404 and r.json()["error"]["code"] == "checkpoint_not_found"


def test_resume_on_restart_is_a_documented_boolean_on_both_surfaces(client: Any) -> None:
    from tuning_service.openai import compat as oc

    doc = client.get("/openapi.json").json()["components"]["schemas"]
    assert doc["CreateTuningRequest"]["properties"]["resume_on_restart"]["anyOf"][0]["type"] == "boolean"
    assert "resume_on_restart" in doc["OpenAICreateJob"]["properties"]
    body = {"model": "tiny-llama", "training_file": "data/train.jsonl"}
    assert client.post("/v1/tunings.create", json=body, headers=H).json()["resume_on_restart"] is False
    on = client.post("/v1/tunings.create", json={**body, "resume_on_restart": True}, headers=H)
    assert on.status_code == 200 and on.json()["resume_on_restart"] is True
    for path in ("/v1/tunings.create", "/v1/fine_tuning/jobs"):
        r = client.post(path, json={**body, "resume_on_restart": "yes"}, headers=H)
        assert r.status_code == 400 and r.json()["error"]["param"] == "resume_on_restart", r.text
    openai_job = client.post(
        "/v1/fine_tuning/jobs", json={**body, "resume_on_restart": True}, headers=H
    ).json()
    native = client.get(f"/v1/tunings.get/{openai_job['id']}", headers=H).json()
    assert native["resume_on_restart"] is True
    event = oc.openai_event(
        native["id"], {"seq": 5, "time": 1.0, "type": "resumed_after_restart", "step": 40}
    )
    assert event["level"] == "warn" and "step 40" in event["message"]

"""Reads stay free of validation: no response is built through a pydantic model (the models in schema/ only
document responses and check them in tests), and tunings.get, the hottest route, validates nothing at all.
In process, through the real app (B1/B2 in scripts/bench/api.py measure the same routes over HTTP)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.support.server import DEV_KEY, make_light_files_root
from tuning_service.api import params
from tuning_service.app import create_app
from tuning_service.schema.base import ResponseModel

H = {"Authorization": f"Bearer {DEV_KEY}"}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    root = make_light_files_root(tmp_path / "files")
    for name, value in {
        "TUNING_DATA_DIR": str(tmp_path / "data"),
        "TUNING_FILES_ROOT": str(root),
        "TUNING_MODELS_DIR": str(tmp_path / "models"),
        "TUNING_MAX_CONCURRENT_JOBS": "0",
        "TUNING_RATE_LIMIT_RPS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    os.makedirs(tmp_path / "models")
    with TestClient(create_app()) as c:
        yield c


def test_no_response_is_built_through_a_model(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    job = client.post(
        "/v1/tunings.create", json={"model": "m", "training_file": "data/train.jsonl"}, headers=H
    )
    assert job.status_code == 200
    job_id = job.json()["id"]
    upload = client.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", b'{"text": "x"}\n')}, headers=H
    )
    assert upload.status_code == 200

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a response was built through a pydantic model")

    for name in ("model_validate", "model_validate_json", "model_construct"):
        monkeypatch.setattr(ResponseModel, name, classmethod(forbidden))
    monkeypatch.setattr(ResponseModel, "__init__", forbidden)
    reads = [
        f"/v1/tunings.get/{job_id}",
        "/v1/tunings.list?limit=100",
        f"/v1/tunings.logs/{job_id}",
        f"/v1/tunings.events/{job_id}",
        f"/v1/tunings.checkpoints/{job_id}",
        "/v1/files.list",
        f"/v1/fine_tuning/jobs/{job_id}",
        "/v1/fine_tuning/jobs",
        f"/v1/fine_tuning/jobs/{job_id}/events",
        "/health",
    ]
    for url in reads:
        r = client.get(url, headers=H)
        assert r.status_code == 200, (url, r.text)


def test_tunings_get_validates_nothing(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = client.post(
        "/v1/tunings.create", json={"model": "m", "training_file": "data/train.jsonl"}, headers=H
    ).json()["id"]
    calls: list[str] = []
    for name in ("query", "query_values", "body", "idempotency_key", "last_event_id"):
        original = getattr(params, name)
        monkeypatch.setattr(
            params, name, lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k)
        )
    for _ in range(3):  # the first read fills the cache, the next ones are served from it
        assert client.get(f"/v1/tunings.get/{job_id}", headers=H).status_code == 200
    assert calls == []
    # A query string on it is still refused (it takes none): validated only when there is one.
    assert client.get(f"/v1/tunings.get/{job_id}?x=1", headers=H).status_code == 400

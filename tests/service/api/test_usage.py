"""Quotas over HTTP on a real service (no trainer runs: jobs stay queued): keys made with limits by the CLI
(`keys create --json`), 429 quota_exceeded, GET /v1/usage, the per-key series of /metrics, `keys update`
lifting a limit, `keys set-integration` never echoing a credential."""

from __future__ import annotations

import json

from tests.support.server import DEV_KEY, ServiceProcess


def test_max_queued_jobs_usage_metrics_and_lifting_the_limit(api_service: ServiceProcess) -> None:
    made = api_service.cli("keys", "create", "--name", "team-q", "--max-queued-jobs", "2", "--json")
    key = json.loads(made.stdout)
    assert set(key) >= {"id", "key", "name", "max_queued_jobs", "max_running_jobs", "max_gpu_hours"}
    assert key["name"] == "team-q" and key["max_queued_jobs"] == 2 and key["max_gpu_hours"] is None
    assert key["key"].startswith("tk-") and key["id"].startswith("key_")
    plaintext = key["key"]

    ids = [api_service.create_job(key=plaintext)["id"] for _ in range(2)]
    r = api_service.post(
        "/v1/tunings.create", {"model": "tiny-llama", "training_file": "data/train.jsonl"}, key=plaintext
    )
    assert r.status == 429, r.text
    assert r.error["code"] == "quota_exceeded" and r.error["param"] == "max_queued_jobs"
    assert "max_queued_jobs = 2" in r.error["message"]
    assert "retry-after" not in r.headers  # waiting a few seconds does not help
    listed = api_service.get("/v1/tunings.list", key=plaintext).json()["data"]
    assert sorted(j["id"] for j in listed) == sorted(ids)  # nothing half made

    usage = api_service.get("/v1/usage", key=plaintext).json()
    assert usage == {
        "object": "usage",
        "key_id": key["id"],
        "running_jobs": 0,
        "queued_jobs": 2,
        "gpu_hours": 0.0,
        "window_days": 30.0,
        "limits": {"max_running_jobs": None, "max_queued_jobs": 2, "max_gpu_hours": None},
    }
    assert api_service.get("/v1/usage?x=1", key=plaintext).error["code"] == "invalid_request"
    assert api_service.get("/v1/usage", key=None).status == 401

    scrape = api_service.get("/metrics", key=None).text
    label = f'key_id="{key["id"]}",key_name="team-q"'
    assert f'tuning_key_jobs{{{label},state="queued"}} 2.0' in scrape
    assert f'tuning_key_limit{{{label},limit="max_queued_jobs"}} 2.0' in scrape
    assert f"tuning_key_gpu_hours{{{label}}} 0.0" in scrape

    lifted = api_service.cli("keys", "update", "team-q", "--max-queued-jobs", "none")
    assert "max_queued_jobs = none" in lifted.stderr
    assert api_service.create_job(key=plaintext)["status"] == "queued"
    bad = api_service.cli("keys", "update", "team-q", "--max-gpu-hours", "-1", check=False)
    assert bad.returncode == 2 and "--max-gpu-hours must be a finite number >= 0" in bad.stderr
    assert api_service.cli("keys", "update", "nobody", "--max-queued-jobs", "1", check=False).returncode == 1
    assert api_service.cli("keys", "update", "team-q", check=False).returncode == 2


def test_set_integration_stores_credentials_without_ever_showing_them(api_service: ServiceProcess) -> None:
    api_service.cli("keys", "create", "--name", "team-w")
    secret = "wandb-key-9f8e7d6c5b4a"
    done = api_service.cli("keys", "set-integration", "team-w", "--wandb-api-key", secret)
    assert "wandb_api_key set" in done.stderr and secret not in done.stdout + done.stderr
    empty = api_service.cli("keys", "set-integration", "team-w", "--hf-token", " ", check=False)
    assert empty.returncode != 0 and "empty credential" in empty.stderr  # refused, not stored
    listing = api_service.cli("keys", "list", "--json").stdout
    row = next(k for k in json.loads(listing) if k["name"] == "team-w")
    assert row["has_wandb_api_key"] and not row["has_hf_token"] and secret not in listing
    assert "wandb" in api_service.cli("keys", "list").stdout
    cleared = api_service.cli("keys", "set-integration", "team-w", "--clear-wandb-api-key")
    assert "wandb_api_key removed" in cleared.stderr
    none = api_service.cli("keys", "set-integration", "team-w", check=False)
    assert none.returncode == 2
    # A job's creator sees its own usage only.
    assert api_service.get("/v1/usage", key=DEV_KEY).json()["key_id"] != row["id"]

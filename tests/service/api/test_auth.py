"""Bearer-key auth over real HTTP: missing/malformed/unknown/revoked keys, keys created with the CLI, the
development keys (and their warning), TUNING_API_KEYS, and stale environment keys after a config change.
"""

from __future__ import annotations

import json

import pytest

from tests.support.server import DEV_KEY, OTHER_KEY, ServiceEnv, ServiceProcess, start_service

PROTECTED = [
    ("POST", "/v1/tunings.create"),
    ("GET", "/v1/tunings.get/ftjob-x"),
    ("GET", "/v1/tunings.list"),
    ("POST", "/v1/tunings.cancel/ftjob-x"),
    ("DELETE", "/v1/tunings.delete/ftjob-x"),
    ("GET", "/v1/tunings.logs/ftjob-x"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_v1_route_needs_a_key(api_service: ServiceProcess, method: str, path: str) -> None:
    r = api_service.request(method, path, key=None)
    assert r.status == 401
    assert r.error["code"] == "missing_api_key"
    assert r.error["type"] == "authentication_error"
    assert "Authorization: Bearer" in r.error["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("header", "code", "fragment"),
    [
        ("Basic dGVzdDp0ZXN0", "missing_api_key", "'Basic' scheme"),
        ("Token test-key-001", "missing_api_key", "'Token' scheme"),
        ("test-key-001", "missing_api_key", "scheme"),
        ("Bearer", "missing_api_key", "empty"),
        ("Bearer    ", "missing_api_key", ""),
        ("Bearer not-a-real-key-123", "invalid_api_key", "unknown or has been revoked"),
    ],
)
def test_malformed_or_unknown_keys_are_401_with_a_clear_message(
    api_service: ServiceProcess, header: str, code: str, fragment: str
) -> None:
    r = api_service.get("/v1/tunings.list", key=None, headers={"Authorization": header})
    assert r.status == 401
    assert r.error["code"] == code
    assert fragment in r.error["message"]
    assert "not-a-real-key-123" not in r.text  # a mistyped key is never echoed back


def test_the_scheme_is_case_insensitive(api_service: ServiceProcess) -> None:
    r = api_service.get("/v1/tunings.list", key=None, headers={"Authorization": f"bearer {DEV_KEY}"})
    assert r.status == 200


@pytest.mark.parametrize("path", ["/health", "/openapi.json", "/docs"])
def test_public_routes_need_no_key(api_service: ServiceProcess, path: str) -> None:
    assert api_service.get(path, key=None).status == 200


def test_both_development_keys_work_and_a_warning_says_so(api_service: ServiceProcess) -> None:
    assert api_service.get("/v1/tunings.list", key=DEV_KEY).status == 200
    assert api_service.get("/v1/tunings.list", key=OTHER_KEY).status == 200
    log = (api_service.data_dir / "tuning_service.log").read_text()
    warning = [line for line in log.splitlines() if "WARNING" in line and "development keys" in line]
    assert warning, log
    assert "test-key-001" in warning[0] and "test-key-002" in warning[0]
    assert "development keys" in api_service.output()  # on stderr too


def test_cli_keys_work_at_once_and_stop_working_when_revoked(api_service: ServiceProcess) -> None:
    created = api_service.cli("keys", "create", "--name", "alice")
    plaintext = created.stdout.strip()
    assert plaintext and "\n" not in plaintext
    assert "cannot be shown again" in created.stderr
    job = api_service.create_job(key=plaintext)

    listing = api_service.cli("keys", "list", "--json").stdout
    keys = json.loads(listing)
    alice = [k for k in keys if k["name"] == "alice"]
    assert len(alice) == 1 and alice[0]["revoked_at"] is None
    assert plaintext not in listing  # only hashes are stored; nothing prints the key again
    assert plaintext not in api_service.cli("keys", "list").stdout

    revoked = api_service.cli("keys", "revoke", alice[0]["id"])
    assert revoked.returncode == 0
    r = api_service.get(f"/v1/tunings.get/{job['id']}", key=plaintext)
    assert r.status == 401
    assert r.error["code"] == "invalid_api_key"
    assert "revoked" in r.error["message"]
    assert "revoked" in api_service.cli("keys", "list").stdout

    again = api_service.cli("keys", "revoke", "alice", check=False)
    assert again.returncode == 1
    assert "No active key" in again.stderr


def test_keys_create_refuses_reserved_or_empty_names(api_service: ServiceProcess) -> None:
    for name in ("env-1", "  "):
        r = api_service.cli("keys", "create", "--name", name, check=False)
        assert r.returncode == 2
        assert r.stdout == ""


def test_configured_keys_replace_the_development_keys(light_service_env: ServiceEnv) -> None:
    """Dev keys on first start; TUNING_API_KEYS later: the dev keys stop working (their jobs stay theirs),
    and the jobs of one key never show up for another."""
    data_dir = light_service_env.new_data_dir("keys-switch")
    dev = start_service(
        data_dir=data_dir,
        files_root=light_service_env.files_root,
        models_dir=light_service_env.models_dir,
        extra_env={"TUNING_MAX_CONCURRENT_JOBS": "0"},
    )
    try:
        dev_job = dev.create_job(key=DEV_KEY)
    finally:
        dev.stop()

    prod = start_service(
        data_dir=data_dir,
        files_root=light_service_env.files_root,
        models_dir=light_service_env.models_dir,
        extra_env={"TUNING_MAX_CONCURRENT_JOBS": "0", "TUNING_API_KEYS": "prod-key-a, prod-key-b"},
    )
    try:
        for key in (DEV_KEY, OTHER_KEY):
            r = prod.get("/v1/tunings.list", key=key)
            assert r.status == 401 and r.error["code"] == "invalid_api_key"
        assert prod.get("/v1/tunings.list", key="prod-key-a").json()["data"] == []
        assert prod.get(f"/v1/tunings.get/{dev_job['id']}", key="prod-key-a").status == 404
        a_job = prod.create_job(key="prod-key-a")
        assert prod.get(f"/v1/tunings.get/{a_job['id']}", key="prod-key-b").status == 404
        # The same configured key owns the same jobs after a restart.
        prod.restart()
        assert prod.get(f"/v1/tunings.get/{a_job['id']}", key="prod-key-a").status == 200
        log = (data_dir / "tuning_service.log").read_text()
        assert "from TUNING_API_KEYS" in log
        # Only the first (development) start warned.
        assert log.count("development keys") == 1
    finally:
        prod.stop()

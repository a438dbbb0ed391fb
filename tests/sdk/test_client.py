"""TuningClient configuration: arguments, environment, defaults, lifecycle."""

from __future__ import annotations

import pytest

from tests.sdk.objects import health_body
from tests.sdk.stub import StubServer, reply
from tuning_sdk import DEFAULT_BASE_URL, TuningClient, TuningError


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch, stub: StubServer) -> None:
    monkeypatch.setenv("TUNING_API_KEY", "from-env")
    monkeypatch.setenv("TUNING_BASE_URL", stub.base_url + "/")
    stub.route("GET", "/health", reply(200, health_body("x")))
    with TuningClient() as client:
        assert client.base_url == stub.base_url
        assert client.health_check()["status"] == "healthy"
    assert stub.requests[0].header("Authorization") == "Bearer from-env"
    # Arguments win over the environment.
    assert (
        TuningClient(api_key="arg", base_url="http://example.invalid:1").base_url
        == "http://example.invalid:1"
    )


def test_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNING_BASE_URL", raising=False)
    assert TuningClient(api_key="k").base_url == DEFAULT_BASE_URL == "http://localhost:8000"


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNING_API_KEY", raising=False)
    with pytest.raises(TuningError, match="TUNING_API_KEY"):
        TuningClient()


def test_bad_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TuningError, match="http://"):
        TuningClient(api_key="k", base_url="localhost:8000")
    with pytest.raises(ValueError, match="timeout"):
        TuningClient(api_key="k", timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        TuningClient(api_key="k", max_retries=-1)


def test_repr_never_shows_the_key() -> None:
    client = TuningClient(api_key="sk-secret-123", base_url="http://h:1")
    assert "sk-secret-123" not in repr(client) and "http://h:1" in repr(client)
    client.close()
    client.close()  # closing twice is harmless

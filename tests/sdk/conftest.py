from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sdk.stub import StubServer
from tuning_sdk import TuningClient, _http, cli


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer().start()
    yield server
    server.stop()
    # Hand-written answers must be what the service could send (objects.py): else the SDK is tested against
    # shapes it never meets.
    assert not server.contract_problems, "\n".join(server.contract_problems)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the SDK's retry delays instead of sleeping them."""
    recorded: list[float] = []
    monkeypatch.setattr(_http, "_sleep", recorded.append)
    return recorded


@pytest.fixture
def client(stub: StubServer) -> Iterator[TuningClient]:
    c = TuningClient(api_key="sk-test", base_url=stub.base_url, timeout=5, max_retries=2)
    yield c
    c.close()


@pytest.fixture
def run(stub: StubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sleeps):
    """The `tuning` CLI against the stub server: run(*argv) -> (exit code, stdout, stderr)."""
    monkeypatch.setenv("TUNING_API_KEY", "k")
    monkeypatch.setenv("TUNING_BASE_URL", stub.base_url)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run

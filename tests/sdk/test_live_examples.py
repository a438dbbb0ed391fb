"""The examples (examples/basic_usage.py, advanced_usage.py --all) against the real service: a module of their
own (about 75 s of real training), so that the test workers share test_live.py's load."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.sdk.test_live import REPO, SLOW, _env
from tests.support.server import ServiceProcess

pytestmark = pytest.mark.timeout(1500)


def test_basic_usage_example(live_service: ServiceProcess) -> None:
    out = subprocess.run(
        # One epoch instead of three: the same code path, a third of the training time.
        [sys.executable, str(REPO / "examples" / "basic_usage.py"), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=SLOW,
        env=_env(live_service),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for step in range(1, 8):
        assert f"Step {step}:" in out.stdout
    assert "training succeeded" in out.stdout and "progress 100.0%" in out.stdout


def test_advanced_usage_example_all(live_service: ServiceProcess) -> None:
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "advanced_usage.py"), "--all"],
        capture_output=True,
        text=True,
        timeout=SLOW,
        env=_env(live_service),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6/6 scenarios behaved as expected" in out.stdout
    assert "NOT AS EXPECTED" not in out.stdout
    print(f"advanced_usage --all took {time.monotonic() - t0:.0f}s")

"""Settings: one field each (settings.py), read from TUNING_* variables by pydantic-settings; the table of
docs/service.md lists exactly these variables with their defaults; a malformed value names its variable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuning_service.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "service.md"


def documented(path: Path = DOC) -> dict[str, str]:
    """variable -> default column of a settings table."""
    rows = re.findall(
        r"^\| `(TUNING_[A-Z_]+)`[^|]* \| ([^|]+) \|", path.read_text(encoding="utf-8"), flags=re.M
    )
    return {name: default.strip() for name, default in rows}


def test_the_documented_variables_are_the_settings() -> None:
    assert set(documented()) == {env_name(f) for f in Settings.model_fields}


def test_the_readmes_shorter_table_names_settings_with_their_defaults() -> None:
    readme = documented(ROOT / "README.md")
    assert readme and set(readme) <= {env_name(f) for f in Settings.model_fields}
    service = documented()
    for name, default in readme.items():
        assert default.split()[0] == service[name].split()[0], name


@pytest.mark.parametrize(
    "field", [f for f, info in Settings.model_fields.items() if info.annotation in (int, float)]
)
def test_the_documented_numeric_defaults_are_the_settings_defaults(field: str) -> None:
    shown = documented()[env_name(field)]
    number = re.match(r"`([0-9.]+)`", shown)
    assert number is not None, (field, shown)
    assert float(number.group(1)) == float(Settings.model_fields[field].default), field


def test_environment_variables_and_field_names_both_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUNING_MAX_CONCURRENT_JOBS", "3")
    monkeypatch.setenv("TUNING_POLL_INTERVAL", "0.25")  # a variable whose name is not the field's
    monkeypatch.setenv("TUNING_GPUS", " 0, 2 ,")
    monkeypatch.setenv("TUNING_RATE_LIMIT_BURST", "")  # empty: the default
    s = Settings()
    assert (s.max_concurrent_jobs, s.poll_interval_seconds, s.gpus, s.rate_limit_burst) == (
        3,
        0.25,
        ["0", "2"],
        200,
    )
    s = Settings(poll_interval_seconds=0.5, data_dir=tmp_path / "d")
    assert s.poll_interval_seconds == 0.5 and s.data_dir.is_absolute()


def test_a_malformed_variable_is_named_without_a_traceback(tmp_path: Path) -> None:
    env = {"TUNING_MAX_CONCURRENT_JOBS": "lots", "TUNING_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "tuning_service", "keys", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "TUNING_MAX_CONCURRENT_JOBS must be an integer, got 'lots'" in proc.stderr
    assert "Traceback" not in proc.stderr

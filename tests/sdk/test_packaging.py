"""The SDK is light: importing it loads no server or ML code, and `pip install .` brings only urllib3."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = [
    "starlette",
    "pydantic",
    "aiosqlite",
    "uvicorn",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "tuning_service",
    "tuning_trainer",
]


def test_import_loads_no_heavy_module() -> None:
    code = (
        "import json, sys, tuning_sdk, tuning_sdk.cli\n"
        "c = tuning_sdk.TuningClient(api_key='k'); c.close()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    assert json.loads(out.stdout) == []


def test_public_names() -> None:
    import tuning_sdk

    for name in tuning_sdk.__all__:
        assert hasattr(tuning_sdk, name), name
    assert (REPO / "sdk" / "tuning_sdk" / "py.typed").exists()


@pytest.mark.slow
def test_pip_install_brings_only_urllib3(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # A copy of the tree keeps build artefacts out of the checkout.
    src = tmp_path / "src"
    subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(tmp_path / "src.tar"), "HEAD"],
        check=True,
    )
    src.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "src.tar"), "-C", str(src)], check=True)
    # The SDK files of the working tree (committed or not) are what is under test.
    subprocess.run(["cp", "-r", str(REPO / "sdk"), str(src)], check=True)
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        out = install.stdout + install.stderr
        offline_signs = (
            "No matching distribution",
            "Could not find a version",
            "NewConnectionError",
            "Temporary failure in name resolution",
            "Network is unreachable",
        )
        if any(sign in out for sign in offline_signs):
            pytest.skip(f"no package index or wheel cache has urllib3/setuptools here: {out[-300:]}")
        raise AssertionError(f"pip install . failed:\n{out[-3000:]}")
    code = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))"
    )
    dists = json.loads(
        subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout
    )
    assert set(dists) - {"pip", "setuptools", "wheel"} == {"tuning", "urllib3"}
    # And it works there: the package, the console script, no heavy import.
    subprocess.run([str(py), "-c", "import tuning_sdk; tuning_sdk.TuningClient(api_key='k')"], check=True)
    out = subprocess.run([str(env_dir / "bin" / "tuning"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "jobs" in out.stdout

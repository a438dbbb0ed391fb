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


def _loaded_after(code: str) -> set[str]:
    """The tuning_sdk modules and whether urllib3 is loaded after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
    probe += "('tuning_sdk', 'urllib3') and m.count('.') <= 2)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=REPO)
    return set(json.loads(out.stdout))


def test_import_defers_the_http_stack_and_the_resources_to_their_first_use() -> None:
    """B5 (docs/benchmarks.md): `import tuning_sdk` and building a client load neither urllib3 nor the
    resources and models; each loads the first time it is needed, and public names resolve as before."""
    light = {f"tuning_sdk{m}" for m in ("", "._client", "._errors", "._http", "._version")}
    assert _loaded_after("import tuning_sdk; tuning_sdk.TuningClient(api_key='k').close()") == light
    assert _loaded_after("import tuning_sdk.webhooks") == light | {"tuning_sdk.webhooks"}
    tunings = _loaded_after("import tuning_sdk; tuning_sdk.TuningClient(api_key='k').tunings")
    assert "tuning_sdk.resources.tunings" in tunings and "tuning_sdk._models" in tunings
    assert not {"urllib3", "tuning_sdk.resources.files", "tuning_sdk._objects"} & tunings
    assert "tuning_sdk._objects" in _loaded_after("from tuning_sdk import FileObject")
    chat = _loaded_after("import tuning_sdk; tuning_sdk.TuningClient(api_key='k').chat.completions")
    assert {"tuning_sdk.resources.chat", "tuning_sdk._inference", "tuning_sdk._streaming"} <= chat
    assert not {"urllib3", "tuning_sdk.resources.tunings", "tuning_sdk.resources.files"} & chat
    with_request = _loaded_after(
        "import tuning_sdk\n"
        "c = tuning_sdk.TuningClient(api_key='k', base_url='http://127.0.0.1:9', max_retries=0)\n"
        "try:\n    c.health_check()\nexcept tuning_sdk.APIConnectionError:\n    pass"
    )
    assert "urllib3" in with_request


def test_lazy_names_resolve_once_and_unknown_names_still_fail() -> None:
    import tuning_sdk
    from tuning_sdk import resources

    assert tuning_sdk.TuningJob is tuning_sdk.TuningJob and "TuningJob" in vars(tuning_sdk)
    assert set(tuning_sdk.__all__) <= set(dir(tuning_sdk))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = tuning_sdk.Nope  # type: ignore[attr-defined]
    assert resources.Tunings.__name__ == "Tunings" and resources.Files.__name__ == "Files"
    assert resources.Models.__name__ == "Models" and resources.ChatCompletions.__name__ == "ChatCompletions"
    with pytest.raises(AttributeError):
        _ = resources.Nope  # type: ignore[attr-defined]
    client = tuning_sdk.TuningClient(api_key="k")
    assert client.tunings is client.tunings and client.files is client.files  # made once per client
    assert client.chat.completions is client.chat.completions and client.models is client.models


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
    cli_help = subprocess.run([str(env_dir / "bin" / "tuning"), "--help"], capture_output=True, text=True)
    assert cli_help.returncode == 0 and "jobs" in cli_help.stdout

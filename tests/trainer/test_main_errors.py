"""Bad jobs fail fast through the real entry point: one `failed` record, exit 2, and no model loaded.

Each case runs `python -m tuning_trainer` in a fresh interpreter and checks afterwards that torch,
transformers and peft were never imported (so no model can have been loaded).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.trainer.conftest import events, launch, of_type, trainer_env

CHAT = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})

# Runs main() and reports the exit code and whether the ML stack got imported.
PROBE = (
    "import sys\n"
    "from tuning_trainer.__main__ import main\n"
    "rc = main(sys.argv[1:])\n"
    "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules]\n"
    "print('HEAVY=' + ','.join(heavy))\n"
    "sys.exit(rc)\n"
)


def probe(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO_ROOT,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


def write(path: Path, lines: list[str | bytes]) -> Path:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


BAD_DATA = {
    "empty_file": [],
    "invalid_json": [CHAT, CHAT, "{oops"],
    "unknown_format": [CHAT, json.dumps({"question": "q"})],
    "no_assistant_turn": [json.dumps({"messages": [{"role": "user", "content": "q"}]})],
    "invalid_encoding": [CHAT, b'{"messages": "\xff"}'],
    "line_too_long": [CHAT, json.dumps({"text": "x" * (1024 * 1024 + 10)})],
    "mixed_formats": [CHAT, json.dumps({"text": "t"})],
}
LINES = {
    "empty_file": None,
    "invalid_json": 3,
    "unknown_format": 2,
    "no_assistant_turn": 1,
    "invalid_encoding": 2,
    "line_too_long": 2,
    "mixed_formats": 2,
}


@pytest.mark.parametrize("code", sorted(BAD_DATA))
def test_bad_training_data(tmp_path: Path, code: str) -> None:
    data = write(tmp_path / "train.jsonl", BAD_DATA[code])
    out = tmp_path / "out"
    started = time.monotonic()
    rc, stdout, stderr = probe(
        "--model", "no/such-model", "--training-file", str(data), "--output-dir", str(out)
    )
    assert time.monotonic() - started < 20
    assert rc == 2, stderr
    assert "HEAVY=\n" in stdout
    (failed,) = events(out)
    assert failed["type"] == "failed"
    assert (failed["code"], failed["data_code"], failed["line"]) == ("invalid_data", code, LINES[code])
    assert failed["file"] == "training_file" and failed["exit_code"] == 2
    if LINES[code]:
        assert f"line {LINES[code]}" in failed["message"]
    assert code in stderr


def test_bad_validation_file_is_named(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", [CHAT])
    valid = write(tmp_path / "valid.jsonl", [CHAT, "nope"])
    out = tmp_path / "out"
    rc, _, _ = probe(
        "--model",
        "m",
        "--training-file",
        str(train),
        "--validation-file",
        str(valid),
        "--output-dir",
        str(out),
    )
    (failed,) = events(out)
    assert rc == 2 and (failed["file"], failed["data_code"], failed["line"]) == (
        "validation_file",
        "invalid_json",
        2,
    )


def test_missing_training_file(tmp_path: Path) -> None:
    rc, _, _ = probe(
        "--model", "m", "--training-file", str(tmp_path / "nope.jsonl"), "--output-dir", str(tmp_path)
    )
    (failed,) = events(tmp_path)
    assert rc == 2 and failed["data_code"] == "file_not_found"


def test_missing_local_model_says_not_found(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", [CHAT])
    for model in (str(tmp_path / "no-model"), "./models/missing", "a/b/c"):
        out = tmp_path / f"out-{abs(hash(model))}"
        rc, stdout, _ = probe("--model", model, "--training-file", str(train), "--output-dir", str(out))
        (failed,) = events(out)
        assert rc == 2 and failed["code"] == "model_not_found", failed
        assert "not found" in failed["message"] and "huggingface.co" not in failed["message"]
        assert "HEAVY=\n" in stdout


def test_unreachable_hub_id_fails_fast(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", [CHAT])
    started = time.monotonic()
    rc, stdout, _ = probe(
        "--model", "some-org/not-cached-model", "--training-file", str(train), "--output-dir", str(tmp_path)
    )
    assert time.monotonic() - started < 15
    (failed,) = events(tmp_path)
    assert rc == 2 and failed["code"] == "model_unavailable"
    assert "HF_HUB_OFFLINE" in failed["message"] and "HEAVY=\n" in stdout


def test_bad_resume_dir(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", [CHAT])
    rc, stdout, _ = probe(
        "--model",
        str(tmp_path),
        "--training-file",
        str(train),
        "--output-dir",
        str(tmp_path),
        "--resume-from",
        str(tmp_path),
    )
    (failed,) = events(tmp_path)
    assert rc == 2 and failed["code"] == "invalid_config" and failed["param"] == "resume_from"
    assert "HEAVY=\n" in stdout


def test_bad_config_value_writes_failed_when_output_dir_is_known(tmp_path: Path) -> None:
    rc, _, stderr = probe(
        "--model", "m", "--training-file", "t", "--output-dir", str(tmp_path), "--learning-rate", "-1"
    )
    (failed,) = events(tmp_path)
    assert (
        rc == 2 and failed["code"] == "invalid_config" and failed["param"] == "hyperparameters.learning_rate"
    )
    assert "learning_rate" in stderr


def test_bad_data_through_accelerate_launch(tmp_path: Path) -> None:
    """The real launch path: the terminal record is there; the launcher itself turns exit 2 into 1."""
    data = write(tmp_path / "train.jsonl", [CHAT, "{oops"])
    proc = launch("--model", "m", "--training-file", str(data), "--output-dir", str(tmp_path / "out"))
    assert proc.returncode != 0
    failed = of_type(events(tmp_path / "out"), "failed")
    assert len(failed) == 1 and (failed[0]["data_code"], failed[0]["line"]) == ("invalid_json", 2)

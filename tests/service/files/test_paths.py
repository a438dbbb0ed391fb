"""Path safety of training_file / validation_file: the schema's FileRef (characters, length) and then
files/paths.py (where the path leads), as a create applies them.

A table of hostile inputs, each refused with 400 invalid_path and a message that contains no server path.
The HTTP side of the same rules is covered in tests/service/api/test_validation.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuning_service.errors import APIError, problem_error
from tuning_service.files.paths import resolve_data_path as _resolve
from tuning_service.schema.jobs import CreateTuningRequest
from tuning_trainer.schema import first_problem, json_schema

SCHEMA = json_schema(CreateTuningRequest)


def resolve_data_path(raw: object, root: Path, *, param: str) -> tuple[str, Path]:
    """What a create does with a data path: the schema first, then where the path leads."""
    try:
        CreateTuningRequest.model_validate({"model": "m", "training_file": "t", param: raw})
    except ValidationError as exc:
        raise problem_error(first_problem(exc, SCHEMA)) from None
    assert isinstance(raw, str)
    return _resolve(raw, root, param=param)


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "files"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text('{"text": "x"}\n')
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "passwords.jsonl").write_text('{"text": "x"}\n')
    # A sibling whose name starts with the root's name: "/tmp/x/files" vs "/tmp/x/files-evil".
    sibling = tmp_path / "files-evil"
    sibling.mkdir()
    (sibling / "a.jsonl").write_text('{"text": "x"}\n')
    os.symlink(outside / "passwords.jsonl", root / "data" / "link-out.jsonl")
    os.symlink(outside, root / "dir-link-out")
    os.symlink(root / "data" / "train.jsonl", root / "data" / "link-in.jsonl")
    return root, tmp_path


HOSTILE = [
    "../secret/passwords.jsonl",
    "data/../../secret/passwords.jsonl",
    "data/../train.jsonl",
    "/etc/passwd",
    "{tmp}/secret/passwords.jsonl",
    "{tmp}/files-evil/a.jsonl",
    "../files-evil/a.jsonl",
    "data/link-out.jsonl",
    "dir-link-out/passwords.jsonl",
    "data/train.jsonl\x00.png",
    "%2e%2e/secret/passwords.jsonl",
    "data/%2e%2e/%2e%2e/secret/passwords.jsonl",
    "..%2fsecret%2fpasswords.jsonl",
    "C:\\Windows\\system32\\config",
    "c:/windows/win.ini",
    "\\\\server\\share\\train.jsonl",
    "data\\..\\..\\secret\\passwords.jsonl",
    "~/secret.jsonl",
    ".",
    "/",
    "data/\nfoo",
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_paths_are_refused_without_echoing_server_paths(layout: tuple[Path, Path], raw: str) -> None:
    root, tmp = layout
    raw = raw.replace("{tmp}", str(tmp))
    with pytest.raises(APIError) as info:
        resolve_data_path(raw, root, param="training_file")
    err = info.value
    assert (err.status_code, err.code, err.param) == (400, "invalid_path", "training_file")
    assert str(tmp) not in err.message and str(root) not in err.message
    assert "secret" not in err.message and "passwd" not in err.message


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("data/train.jsonl", "data/train.jsonl"),
        ("./data/train.jsonl", "data/train.jsonl"),
        ("data//train.jsonl", "data/train.jsonl"),
        ("data/link-in.jsonl", "data/link-in.jsonl"),
        ("{root}/data/train.jsonl", "data/train.jsonl"),
        (
            "data/missing.jsonl",
            "data/missing.jsonl",
        ),  # existence is the data check's job (404 file_not_found)
    ],
)
def test_paths_inside_the_root_resolve(layout: tuple[Path, Path], raw: str, shown: str) -> None:
    root, _ = layout
    got_shown, resolved = resolve_data_path(raw.replace("{root}", str(root)), root, param="training_file")
    assert got_shown == shown
    assert resolved.is_relative_to(root.resolve())
    assert resolved.is_absolute()


def test_symlink_inside_the_root_is_followed_to_its_target(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    _, resolved = resolve_data_path("data/link-in.jsonl", root, param="training_file")
    assert resolved == (root / "data" / "train.jsonl").resolve()


@pytest.mark.parametrize("raw", [3, ["data/train.jsonl"], {"path": "x"}])
def test_non_strings_are_invalid_requests(layout: tuple[Path, Path], raw: object) -> None:
    root, _ = layout
    with pytest.raises(APIError) as info:
        resolve_data_path(raw, root, param="validation_file")
    assert (info.value.status_code, info.value.code, info.value.param) == (
        400,
        "invalid_request",
        "validation_file",
    )


@pytest.mark.parametrize("raw", ["", "   "])
def test_empty_or_blank_training_files_are_refused(layout: tuple[Path, Path], raw: str) -> None:
    root, _ = layout
    with pytest.raises(APIError) as info:
        resolve_data_path(raw, root, param="training_file")
    assert info.value.status_code == 400 and info.value.param == "training_file"


def test_overlong_path_is_refused(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with pytest.raises(APIError) as info:
        resolve_data_path("a/" * 600, root, param="training_file")
    assert info.value.code == "invalid_path"

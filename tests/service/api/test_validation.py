"""Create-body validation over real HTTP: malformed bodies (400), invalid values (422) naming the field,
data-file errors with their line, unsafe paths (400 invalid_path, no server paths echoed), the body size limit
(413) -- and that a refused request queues nothing.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
from pathlib import Path

import pytest

from tests.support.server import DEV_KEY, ServiceProcess

GOOD = {"model": "tiny-llama", "training_file": "data/train.jsonl"}


def _chat(user: str = "hi", assistant: str = "hello") -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
    )


@pytest.fixture(scope="module")
def bad_files(api_service: ServiceProcess) -> dict[str, str]:
    """Broken data files inside the files root, by name -> path relative to the root."""
    d = api_service.files_root / "bad"
    d.mkdir(exist_ok=True)
    files = {
        "invalid_json_line3": _chat() + "\n" + _chat() + "\n" + '{"messages": [\n',
        "no_assistant_line2": _chat()
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
        + "\n",
        "mixed_line2": _chat() + "\n" + json.dumps({"text": "plain"}) + "\n",
        "unknown_format_line1": json.dumps({"question": "q", "answer": "a"}) + "\n",
        "empty": "\n\n",
        "bad_role_line1": json.dumps({"messages": [{"role": "wizard", "content": "x"}]}) + "\n",
    }
    out = {}
    for name, text in files.items():
        (d / f"{name}.jsonl").write_text(text, encoding="utf-8")
        out[name] = f"bad/{name}.jsonl"
    (d / "latin1.jsonl").write_bytes(_chat().encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    out["latin1_line2"] = "bad/latin1.jsonl"
    return out


def _total_jobs(svc: ServiceProcess) -> int:
    return int(svc.get("/health", key=None).json()["total_jobs"])


def _assert_error(r, status: int, code: str, param: str | None) -> dict:  # type: ignore[no-untyped-def]
    assert r.status == status, r.text
    err = r.error
    assert err["code"] == code, err
    assert err["param"] == param, err
    assert err["message"]
    assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    return err


# ---- malformed requests (400) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b'{"model": "x",}', "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (b'"just a string"', "invalid_request"),
    ],
)
def test_non_object_bodies_are_400(api_service: ServiceProcess, body: bytes, code: str) -> None:
    r = api_service.request(
        "POST", "/v1/tunings.create", body=body, headers={"Content-Type": "application/json"}
    )
    _assert_error(r, 400, code, None)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"model": 5}, "model"),
        ({"training_file": None}, "training_file"),
        ({"training_file": ["data/train.jsonl"]}, "training_file"),
        ({"validation_file": 3}, "validation_file"),
        ({"hyperparameters": [1, 2]}, "hyperparameters"),
        ({"method": 1}, "method"),
        ({"seed": "42"}, "seed"),
        ({"seed": True}, "seed"),
        ({"metadata": ["a"]}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"n_epochs": 3}, "n_epochs"),
    ],
)
def test_missing_fields_and_wrong_types_are_400_naming_the_field(
    api_service: ServiceProcess, change: dict, param: str
) -> None:
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None or k not in GOOD}
    r = api_service.post("/v1/tunings.create", body)
    _assert_error(r, 400, "invalid_request", param)


# ---- invalid values (422) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hyperparameters", "param", "fragment"),
    [
        (
            {"learning_rate": -1.0},
            "hyperparameters.learning_rate",
            "hyperparameters.learning_rate must be a number in (0.0, 1.0], got -1.0",
        ),
        ({"learning_rate": "fast"}, "hyperparameters.learning_rate", "must be a number"),
        ({"epochs": 0}, "hyperparameters.epochs", 'an integer in [1, 1000] or "auto", got 0'),
        ({"epochs": "many"}, "hyperparameters.epochs", "integer"),
        ({"batch_size": 2.5}, "hyperparameters.batch_size", "integer"),
        ({"lora_r": 0}, "hyperparameters.lora_r", "must be an integer in [1, 4096], got 0"),
        ({"lr_scheduler_type": "exotic"}, "hyperparameters.lr_scheduler_type", "one of"),
        (
            {"warmup_steps": 10},
            "hyperparameters.warmup_steps",
            "Unknown field 'hyperparameters.warmup_steps'",
        ),
    ],
)
def test_bad_hyperparameters_are_422_naming_the_hyperparameter(
    api_service: ServiceProcess, hyperparameters: dict, param: str, fragment: str
) -> None:
    r = api_service.post("/v1/tunings.create", {**GOOD, "hyperparameters": hyperparameters})
    err = _assert_error(r, 422, "invalid_hyperparameter", param)
    assert fragment in err["message"]


def test_the_seed_spec_hyperparameters_are_accepted(api_service: ServiceProcess) -> None:
    job = api_service.create_job(hyperparameters={"epochs": 3, "learning_rate": 0.0002, "batch_size": 4})
    hp = job["hyperparameters"]
    assert (hp["epochs"], hp["learning_rate"], hp["batch_size"]) == (3, 0.0002, 4)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"method": "full"}, "method"),
        ({"model": "../../etc/passwd"}, "model"),
        ({"model": "/abs/model"}, "model"),
        ({"model": "m" * 300}, "model"),
        ({"suffix": "has space"}, "suffix"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ],
)
def test_invalid_values_are_422_naming_the_field(
    api_service: ServiceProcess, change: dict, param: str
) -> None:
    r = api_service.post("/v1/tunings.create", {**GOOD, **change})
    _assert_error(r, 422, "invalid_value", param)


# ---- data files: errors carry the trainer's code and the line ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "code", "line"),
    [
        ("invalid_json_line3", "invalid_json", 3),
        ("no_assistant_line2", "no_assistant_turn", 2),
        ("mixed_line2", "mixed_formats", 2),
        ("unknown_format_line1", "unknown_format", 1),
        ("bad_role_line1", "invalid_field", 1),
        ("latin1_line2", "invalid_encoding", 2),
        ("empty", "empty_file", None),
    ],
)
def test_data_file_errors_are_422_with_code_and_line(
    api_service: ServiceProcess, bad_files: dict[str, str], name: str, code: str, line: int | None
) -> None:
    before = _total_jobs(api_service)
    r = api_service.post("/v1/tunings.create", {**GOOD, "training_file": bad_files[name]})
    err = _assert_error(r, 422, code, "training_file")
    assert err["line"] == line
    if line is not None:
        assert f"line {line}" in err["message"]
    assert _total_jobs(api_service) == before  # nothing was queued


def test_validation_file_errors_name_the_validation_file(
    api_service: ServiceProcess, bad_files: dict[str, str]
) -> None:
    r = api_service.post("/v1/tunings.create", {**GOOD, "validation_file": bad_files["invalid_json_line3"]})
    err = _assert_error(r, 422, "invalid_json", "validation_file")
    assert err["line"] == 3


def test_a_missing_training_file_is_404_file_not_found(api_service: ServiceProcess) -> None:
    r = api_service.post("/v1/tunings.create", {**GOOD, "training_file": "data/nope.jsonl"})
    err = _assert_error(r, 404, "file_not_found", "training_file")
    assert "data/nope.jsonl" in err["message"]
    assert str(api_service.files_root) not in r.text


def test_a_directory_is_not_a_training_file(api_service: ServiceProcess) -> None:
    r = api_service.post("/v1/tunings.create", {**GOOD, "training_file": "data"})
    _assert_error(r, 404, "file_not_found", "training_file")


# ---- unsafe paths (400 invalid_path, nothing echoed) -------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "../outside.jsonl",
        "data/../../outside.jsonl",
        "/etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "C:\\data\\train.jsonl",
        "data/train.jsonl\u0000",
        "data/escape-link.jsonl",
    ],
)
def test_unsafe_paths_are_400_invalid_path_without_server_paths(
    api_service: ServiceProcess, path: str
) -> None:
    outside = api_service.files_root.parent / "outside.jsonl"
    outside.write_text(_chat() + "\n")
    link = api_service.files_root / "data" / "escape-link.jsonl"
    if not link.is_symlink():
        os.symlink(outside, link)
    for field in ("training_file", "validation_file"):
        r = api_service.post("/v1/tunings.create", {**GOOD, field: path})
        _assert_error(r, 400, "invalid_path", field)
        assert str(api_service.files_root.parent) not in r.text
        assert "passwd" not in r.text


# ---- body size limit (413) ---------------------------------------------------------------------------------


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return head, body


def test_an_announced_oversize_body_is_413(api_service: ServiceProcess) -> None:
    # The answer comes from the Content-Length header alone, before any of the body is read. (Sending the
    # whole body first, as urllib does, races the server closing the connection: a broken pipe.)
    with socket.create_connection(("127.0.0.1", api_service.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/tunings.create HTTP/1.1\r\nHost: test\r\n"
            + f"Authorization: Bearer {DEV_KEY}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {1024 * 1024 + 10}\r\n\r\n".encode()
            + b'{"model": "tiny-llama", "metadata": {"blob": "xxxx'
        )
        head, body = _read_response(sock)
    assert head.split(b" ")[1] == b"413", head
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and "bytes" in error["message"]


def test_a_chunked_oversize_body_is_413(api_service: ServiceProcess) -> None:
    # No Content-Length: the limit is enforced while the chunks arrive. The client stops sending as soon as
    # the answer is there, as a real client would.
    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    with socket.create_connection(("127.0.0.1", api_service.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/tunings.create HTTP/1.1\r\nHost: test\r\n"
            + f"Authorization: Bearer {DEV_KEY}\r\n".encode()
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(
            chunk(b'{"model": "tiny-llama", "training_file": "data/train.jsonl", "metadata": {"b": "')
        )
        for _ in range(64):  # up to 4 MiB, far over the 1 MiB limit
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk(b"x" * 65536))
            except (BrokenPipeError, ConnectionResetError):
                break
        head, body = _read_response(sock)
    assert head.split(b" ")[1] == b"413", head
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_the_service_still_works_after_refusals(api_service: ServiceProcess) -> None:
    before = _total_jobs(api_service)
    job = api_service.create_job()
    assert job["status"] == "queued"
    assert _total_jobs(api_service) == before + 1


def test_invalid_path_messages_do_not_leak_the_files_root(
    api_service: ServiceProcess, tmp_path: Path
) -> None:
    r = api_service.post("/v1/tunings.create", {**GOOD, "training_file": str(tmp_path / "x.jsonl")})
    assert r.status == 400
    assert str(tmp_path) not in r.text

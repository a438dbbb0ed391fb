"""client.files and `tuning files` against the stub: the multipart body, retries, paths, errors, output."""

from __future__ import annotations

import io
import json
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from tests.sdk import objects
from tests.sdk.objects import deleted_file_body, file_error_body, file_list_body
from tests.sdk.stub import Handler, Recorded, StubServer, drop, error, reply
from tuning_sdk import BadRequestError, ConflictError, FileObject, NotFoundError, TuningClient, cli
from tuning_sdk._transfer import MultipartFile

DATA = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n' * 3


def file_body(file_id: str = "file-1", status: str = "processed", **extra: Any) -> dict[str, Any]:
    """A file object of DATA (validated against the service's File, objects.py)."""
    return objects.file_body(file_id, status, **{"bytes": len(DATA), **extra})


def parts(req: Recorded) -> dict[str, tuple[str | None, bytes]]:
    """The multipart body as {name: (filename, bytes)}, parsed by the stdlib's MIME parser."""
    ctype = req.header("Content-Type") or ""
    assert ctype.startswith("multipart/form-data; boundary=")
    assert int(req.header("Content-Length") or -1) == len(req.body)
    msg = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + req.body
    )
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out[str(name)] = (part.get_filename(), payload)
    return out


def test_upload_a_path_sends_a_multipart_body(stub: StubServer, client: TuningClient, tmp_path: Path) -> None:
    stub.route("POST", "/v1/files.upload", reply(200, file_body()))
    path = tmp_path / "train.jsonl"
    path.write_bytes(DATA)
    f = client.files.upload(path)
    assert isinstance(f, FileObject) and f.is_processed and f.num_examples == 3 and f.format == "chat"
    (req,) = stub.calls("POST", "/v1/files.upload")
    assert parts(req) == {"purpose": (None, b"fine-tune"), "file": ("train.jsonl", DATA)}
    assert req.header("Idempotency-Key")


def test_upload_a_file_object_with_a_name_and_a_purpose(stub: StubServer, client: TuningClient) -> None:
    stub.route("POST", "/v1/files.upload", reply(200, file_body()))
    buf = io.BytesIO(b"xx" + DATA)
    buf.seek(2)  # uploads from the current position, as a file object handed over mid-way expects
    client.files.upload(buf, filename='we"ird\nname.jsonl', purpose="other")
    got = parts(stub.requests[-1])
    assert got["purpose"] == (None, b"other")
    assert got["file"] == ("we%22ird%0Aname.jsonl", DATA)  # quotes and line breaks escaped (RFC 7578)


def test_a_dropped_upload_is_retried_whole_with_the_same_key(
    stub: StubServer, client: TuningClient, sleeps: list[float], tmp_path: Path
) -> None:
    stub.route("POST", "/v1/files.upload", drop(), reply(200, file_body()))
    path = tmp_path / "t.jsonl"
    path.write_bytes(DATA)
    assert client.files.upload(str(path)).id == "file-1"
    first, second = stub.calls("POST", "/v1/files.upload")
    assert first.body == second.body and parts(second)["file"][1] == DATA
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key")
    assert len(sleeps) == 1


def test_multipart_reader_reads_in_any_block_size() -> None:
    body = MultipartFile(io.BytesIO(DATA), filename="a.jsonl", fields={"purpose": "fine-tune"})
    whole = body.read()
    assert len(whole) == len(body)
    for size in (1, 7, 64, 10_000):
        body.seek(0)
        chunks = []
        while chunk := body.read(size):
            chunks.append(chunk)
        assert b"".join(chunks) == whole
    with pytest.raises(OSError):
        body.seek(5)


def test_upload_errors(stub: StubServer, client: TuningClient, tmp_path: Path) -> None:
    stub.route(
        "POST",
        "/v1/files.upload",
        error(400, "invalid_value", "purpose must be one of fine-tune", param="purpose"),
    )
    path = tmp_path / "t.jsonl"
    path.write_bytes(DATA)
    with pytest.raises(BadRequestError) as info:
        client.files.upload(path, purpose="x")
    assert info.value.param == "purpose" and info.value.code == "invalid_value"
    with pytest.raises(FileNotFoundError):
        client.files.upload(tmp_path / "missing.jsonl")
    with pytest.raises(TypeError, match="seekable binary file"):
        client.files.upload(12)  # type: ignore[arg-type]


def test_an_invalid_file_is_returned_with_its_line(stub: StubServer, client: TuningClient) -> None:
    bad = file_body(
        status="error",
        status_details="line 2: not valid JSON",
        error=file_error_body("invalid_json", "not valid JSON", 2),
    )
    stub.route("POST", "/v1/files.upload", reply(200, bad))
    f = client.files.upload(io.BytesIO(b"{}\n{"))
    assert not f.is_processed and f.error is not None
    assert (f.error.code, f.error.line) == ("invalid_json", 2)
    assert str(f.error) == "line 2: not valid JSON (invalid_json)"


def _raw(status: int, data: bytes, ctype: str = "application/jsonl"):
    def action(h: Handler, req: Recorded) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return action


def test_list_get_content_delete(stub: StubServer, client: TuningClient) -> None:
    stub.route(
        "GET",
        "/v1/files.list",
        reply(200, file_list_body([file_body("file-2")], has_more=True)),
        reply(200, file_list_body([file_body("file-1")])),
    )
    stub.route("GET", "/v1/files.get/", reply(200, file_body("file-1")))
    stub.route("GET", "/v1/files.content/", _raw(200, DATA))
    stub.route("DELETE", "/v1/files.delete/", reply(200, deleted_file_body("file-1")))
    assert [f.id for f in client.files.list(limit=1, purpose="fine-tune")] == ["file-2", "file-1"]
    first, second = stub.calls("GET", "/v1/files.list")
    assert first.query == {"limit": ["1"], "purpose": ["fine-tune"]}
    assert second.query["after"] == ["file-2"]
    assert client.files.get("file-1").bytes == len(DATA)
    assert client.files.content("file-1") == DATA
    assert client.files.delete("file-1").deleted
    client.files.get("../x")
    assert stub.requests[-1].path == "/v1/files.get/..%2Fx"
    with pytest.raises(ValueError, match="non-empty file id"):
        client.files.get("")


def test_delete_in_use_and_unknown_file(stub: StubServer, client: TuningClient) -> None:
    stub.route("DELETE", "/v1/files.delete/", error(409, "file_in_use", "used by job ftjob-1", param="id"))
    stub.route("GET", "/v1/files.content/", error(404, "file_not_found", "no such file", param="id"))
    with pytest.raises(ConflictError) as info:
        client.files.delete("file-1")
    assert info.value.code == "file_in_use"
    with pytest.raises(NotFoundError):
        client.files.content("file-9")


# ---- tuning files ...  --------------------------------------------------------------------------------


def test_cli_files(stub: StubServer, run, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(DATA)
    stub.route("POST", "/v1/files.upload", reply(200, file_body()))
    code, out, _ = run("files", "upload", str(path))
    assert code == 0 and "num_examples  3" in out and "file-1" in out
    code, out, _ = run("--json", "files", "upload", str(path))
    assert code == 0 and json.loads(out)["status"] == "processed"

    stub.route("GET", "/v1/files.list", reply(200, file_list_body([file_body()])))
    code, out, _ = run("files", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["ID", "STATUS", "FILENAME"] and "file-1" in out
    code, out, _ = run("files", "list", "--json")
    assert [f["id"] for f in json.loads(out)] == ["file-1"]

    stub.route("GET", "/v1/files.content/", _raw(200, DATA))
    target = tmp_path / "copy.jsonl"
    assert run("files", "content", "file-1", "-o", str(target))[0] == 0
    assert target.read_bytes() == DATA

    stub.route("DELETE", "/v1/files.delete/", reply(200, deleted_file_body("file-1")))
    assert run("files", "delete", "file-1") == (0, "deleted file-1\n", "")


def test_cli_files_exit_codes(stub: StubServer, run, tmp_path: Path) -> None:
    bad = file_body(status="error", error=file_error_body("empty_file", "the file is empty", None))
    stub.route("POST", "/v1/files.upload", reply(200, bad))
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    code, out, _ = run("files", "upload", str(path))
    assert code == cli.EXIT_REJECTED and "the file is empty (empty_file)" in out
    code, _, err = run("files", "upload", str(tmp_path / "nope.jsonl"))
    assert code == cli.EXIT_USAGE and "nope.jsonl" in err
    stub.route("GET", "/v1/files.get/", error(404, "file_not_found", "no such file"))
    code, out, err = run("--json", "files", "get", "file-x")
    assert code == cli.EXIT_NOT_FOUND and json.loads(out)["error"]["code"] == "file_not_found"

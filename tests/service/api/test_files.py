"""The native file endpoints over real HTTP: upload (validated on upload), list, get, content, delete, per-key
ownership, limits, and jobs that name a file by id.

One real service for the module (`api_service`: runs no trainers, jobs stay queued).
"""

from __future__ import annotations

import pytest

from tests.service.files_support import BAD_JSONL, GOOD_JSONL, multipart, upload, upload_raw
from tests.support.server import DEV_KEY, OTHER_KEY, ServiceProcess

FILE_FIELDS = {
    "id", "object", "bytes", "created_at", "filename", "purpose", "status", "status_details", "format",
    "num_examples", "error",
}  # fmt: skip
UNKNOWN = "file-" + "0" * 24


def test_upload_of_a_valid_jsonl_is_processed_with_format_and_count(api_service: ServiceProcess) -> None:
    f = upload(api_service, GOOD_JSONL, filename="train.jsonl")
    assert set(f) == FILE_FIELDS
    assert f["id"].startswith("file-") and len(f["id"]) == 29
    assert f["object"] == "file"
    assert f["status"] == "processed"
    assert f["format"] == "chat"
    assert f["num_examples"] == 8
    assert f["bytes"] == len(GOOD_JSONL)
    assert f["filename"] == "train.jsonl"
    assert f["purpose"] == "fine-tune"
    assert f["error"] is None and f["status_details"] is None
    # Stored by id under the data dir, byte for byte.
    assert (api_service.data_dir / "files" / f["id"]).read_bytes() == GOOD_JSONL


def test_upload_of_an_invalid_jsonl_is_kept_with_a_line_numbered_error(api_service: ServiceProcess) -> None:
    f = upload(api_service, BAD_JSONL, filename="bad.jsonl")
    assert f["status"] == "error"
    assert f["error"]["code"] == "invalid_json"
    assert f["error"]["line"] == 2
    assert "line 2" in f["error"]["message"] and f["status_details"] == f["error"]["message"]
    assert f["format"] is None and f["num_examples"] is None
    # Nothing is lost: the bytes can be fetched back to be fixed.
    r = api_service.get(f"/v1/files.content/{f['id']}")
    assert r.status == 200 and r.body == BAD_JSONL


@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (b"", "empty_file", None),
        (b'{"text": "a"}\n{"prompt": "p", "completion": "c"}\n', "mixed_formats", 2),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "no_assistant_turn", 1),
        (b"\xff\xfe\n", "invalid_encoding", 1),
    ],
)
def test_upload_reports_the_trainers_data_codes(
    api_service: ServiceProcess, data: bytes, code: str, line: int | None
) -> None:
    f = upload(api_service, data)
    assert f["status"] == "error"
    assert f["error"]["code"] == code
    assert f["error"]["line"] == line


def test_upload_strips_directories_from_the_filename(api_service: ServiceProcess) -> None:
    f = upload(api_service, GOOD_JSONL, filename="../../etc/passwd")
    assert f["filename"] == "passwd"


@pytest.mark.parametrize(
    ("purpose", "status", "code"),
    [(None, 400, "invalid_request"), ("assistants", 422, "invalid_value"), ("batch", 422, "invalid_value")],
)
def test_upload_requires_purpose_fine_tune(
    api_service: ServiceProcess, purpose: str | None, status: int, code: str
) -> None:
    r = upload_raw(api_service, GOOD_JSONL, purpose=purpose)
    assert r.status == status
    assert r.error["code"] == code
    assert r.error["param"] == "purpose"


def test_upload_without_a_file_part_or_not_multipart_is_400(api_service: ServiceProcess) -> None:
    body, ctype = multipart({"purpose": "fine-tune"})
    r = api_service.request("POST", "/v1/files.upload", body=body, headers={"Content-Type": ctype})
    assert r.status == 400 and r.error["param"] == "file"
    r = api_service.post("/v1/files.upload", {"file": "x", "purpose": "fine-tune"})
    assert r.status == 400 and r.error["param"] == "file"
    assert "multipart/form-data" in r.error["message"]


def test_a_malformed_multipart_body_is_400(api_service: ServiceProcess) -> None:
    r = api_service.request(
        "POST",
        "/v1/files.upload",
        body=b"--nope\r\nnot a part at all",
        headers={"Content-Type": "multipart/form-data; boundary=other"},
    )
    assert r.status == 400 and r.error["param"] in ("file", "purpose")


def test_upload_needs_a_key(api_service: ServiceProcess) -> None:
    r = upload_raw(api_service, GOOD_JSONL, key="nope-not-a-key")
    assert r.status == 401


def test_get_list_and_content(api_service: ServiceProcess) -> None:
    key = api_service.new_key("files-list")
    ids = [upload(api_service, GOOD_JSONL, filename=f"f{i}.jsonl", key=key)["id"] for i in range(3)]
    got = api_service.get(f"/v1/files.get/{ids[0]}", key=key).json()
    assert got["id"] == ids[0] and got["filename"] == "f0.jsonl"
    # Newest first, cursor pagination.
    page = api_service.get("/v1/files.list?limit=2", key=key).json()
    assert [f["id"] for f in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True and page["last_id"] == ids[1]
    rest = api_service.get(f"/v1/files.list?limit=2&after={page['last_id']}", key=key).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
    r = api_service.get(f"/v1/files.content/{ids[2]}", key=key)
    assert r.status == 200 and r.body == GOOD_JSONL
    assert r.headers["content-type"].startswith("application/jsonl")
    assert 'filename="f2.jsonl"' in r.headers["content-disposition"]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "purpose=batch", "stauts=x"])
def test_list_rejects_bad_query_parameters(api_service: ServiceProcess, query: str) -> None:
    r = api_service.get(f"/v1/files.list?{query}")
    assert r.status == 400
    assert r.error["param"] == query.split("=")[0]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/files.get/{id}"),
        ("GET", "/v1/files.content/{id}"),
        ("DELETE", "/v1/files.delete/{id}"),
    ],
)
def test_another_keys_file_is_indistinguishable_from_an_unknown_id(
    api_service: ServiceProcess, method: str, path: str
) -> None:
    f = upload(api_service, GOOD_JSONL, key=DEV_KEY)
    theirs = api_service.request(method, path.format(id=f["id"]), key=OTHER_KEY)
    missing = api_service.request(method, path.format(id=UNKNOWN), key=OTHER_KEY)
    assert theirs.status == missing.status == 404
    assert theirs.error["code"] == missing.error["code"] == "file_not_found"
    assert theirs.error["message"].replace(f["id"], UNKNOWN) == missing.error["message"]
    assert api_service.get(f"/v1/files.get/{f['id']}").status == 200  # untouched
    other_ids = {x["id"] for x in api_service.get("/v1/files.list?limit=100", key=OTHER_KEY).json()["data"]}
    assert f["id"] not in other_ids


@pytest.mark.parametrize("file_id", ["nope", "file-XYZ", "file-" + "g" * 24])
def test_malformed_ids_are_404(api_service: ServiceProcess, file_id: str) -> None:
    r = api_service.get(f"/v1/files.get/{file_id}")
    assert r.status == 404 and r.error["code"] == "file_not_found"


def test_delete_removes_the_row_and_the_bytes(api_service: ServiceProcess) -> None:
    f = upload(api_service)
    r = api_service.delete(f"/v1/files.delete/{f['id']}")
    assert r.status == 200
    assert r.json() == {"id": f["id"], "object": "file", "deleted": True}
    assert not (api_service.data_dir / "files" / f["id"]).exists()
    assert api_service.get(f"/v1/files.get/{f['id']}").status == 404
    assert api_service.delete(f"/v1/files.delete/{f['id']}").status == 404


# ---- jobs that name a file by id ---------------------------------------------------------------------------


def test_a_job_accepts_a_file_id_for_both_files(api_service: ServiceProcess) -> None:
    train, valid = upload(api_service), upload(api_service, filename="valid.jsonl")
    job = api_service.create_job(training_file=train["id"], validation_file=valid["id"])
    assert job["training_file"] == train["id"] and job["validation_file"] == valid["id"]
    assert job["status"] == "queued"
    # The file cannot be deleted while the job may still use it; once the job is finished it can.
    r = api_service.delete(f"/v1/files.delete/{train['id']}")
    assert r.status == 409 and r.error["code"] == "file_in_use" and job["id"] in r.error["message"]
    api_service.post(f"/v1/tunings.cancel/{job['id']}")
    assert api_service.delete(f"/v1/files.delete/{train['id']}").status == 200


def test_a_job_naming_an_invalid_file_is_422_with_the_line(api_service: ServiceProcess) -> None:
    bad = upload(api_service, BAD_JSONL)
    r = api_service.post(
        "/v1/tunings.create",
        {"model": "tiny-llama", "training_file": "data/train.jsonl", "validation_file": bad["id"]},
    )
    assert r.status == 422
    assert r.error["code"] == "file_invalid"
    assert r.error["param"] == "validation_file"
    assert r.error["line"] == 2 and "line 2" in r.error["message"]


def test_a_job_naming_an_unknown_or_another_keys_file_is_404(api_service: ServiceProcess) -> None:
    theirs = upload(api_service, key=OTHER_KEY)
    for file_id in (UNKNOWN, theirs["id"]):
        r = api_service.post("/v1/tunings.create", {"model": "tiny-llama", "training_file": file_id})
        assert r.status == 404
        assert r.error["code"] == "file_not_found" and r.error["param"] == "training_file"


def test_uploads_may_exceed_the_request_limit_but_not_the_file_limit(light_service_env) -> None:  # type: ignore[no-untyped-def]
    svc = light_service_env.start(
        "files-limits",
        extra_env={
            "TUNING_MAX_CONCURRENT_JOBS": "0",
            "TUNING_MAX_REQUEST_BYTES": "2048",
            "TUNING_MAX_FILE_BYTES": "20000",
        },
    )
    try:
        big = GOOD_JSONL * 15  # ~12 KB: over the request limit, under the file limit
        assert len(big) > 2048
        f = upload(svc, big)
        assert f["status"] == "processed" and f["num_examples"] == 120
        r = upload_raw(svc, GOOD_JSONL * 40)  # ~32 KB: over the file limit
        assert r.status == 413
        assert r.error["code"] == "file_too_large"
        assert not [p for p in (svc.data_dir / "files").iterdir() if p.name != f["id"]]
        # An announced length far over the limit is refused before the body is read.
        r = upload_raw(svc, GOOD_JSONL * 150)
        assert r.status == 413 and r.error["code"] == "file_too_large"
        # Other routes keep the request limit.
        r = svc.post("/v1/tunings.create", {"model": "x" * 4000, "training_file": "data/train.jsonl"})
        assert r.status == 413 and r.error["code"] == "request_too_large"
    finally:
        svc.shutdown()

"""The file store (files.py) below HTTP: ids, names, validation into `processed`/`error`, ownership, the rules
for jobs that name a file, delete while in use, and the in-place upgrade of an older database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.service.core_fixtures import make_settings, request, run
from tuning_service.engine.facade import JobManager
from tuning_service.errors import APIError
from tuning_service.files.store import Files, _clean_filename, is_file_id, new_file_id
from tuning_service.storage.db import SCHEMA_VERSION
from tuning_service.storage.store import Store


def test_ids_and_names() -> None:
    fid = new_file_id()
    assert is_file_id(fid) and len(fid) == 29
    assert not is_file_id("file-" + "G" * 24) and not is_file_id(None) and not is_file_id("ftjob-x")
    assert _clean_filename("../../etc/passwd") == "passwd"
    assert _clean_filename("C:\\data\\train.jsonl") == "train.jsonl"
    assert _clean_filename('a"b\x00c.jsonl') == "abc.jsonl"
    assert _clean_filename("") == "upload.jsonl"
    assert len(_clean_filename("x" * 1000)) == 255


async def _store_file(files: Files, owner: str, data: bytes) -> dict[str, object]:
    fid = new_file_id()
    files.root.mkdir(parents=True, exist_ok=True)
    files.path(fid).write_bytes(data)
    return await files._validate_and_record(
        fid, owner=owner, filename="t.jsonl", purpose="fine-tune", size=len(data)
    )


def test_validation_ownership_and_jobs(tmp_path: Path) -> None:
    async def body() -> None:
        m = await JobManager.start(make_settings(tmp_path, max_concurrent_jobs=0))
        a, _ = await m.create_key("a")
        b, _ = await m.create_key("b")
        try:
            good = await _store_file(m.files, a, b'{"text": "hello"}\n{"text": "world"}\n')
            assert (good["status"], good["format"], good["num_examples"]) == ("processed", "text", 2)
            bad = await _store_file(m.files, a, b'{"text": "x"}\n{"text": 5}\n')
            assert bad["status"] == "error"
            assert bad["error"] == {"code": "invalid_field", "message": bad["status_details"], "line": 2}
            # Another key: the same 404 as an unknown id.
            with pytest.raises(APIError) as info:
                await m.files.get(str(good["id"]), b)
            assert (info.value.status_code, info.value.code) == (404, "file_not_found")
            # A job naming the file resolves to the stored bytes; an invalid file is 422 with its line.
            assert await m.files.for_job(str(good["id"]), a, "training_file") == (
                m.files.path(str(good["id"])),
                "text",
            )
            with pytest.raises(APIError) as info:
                await m.files.for_job(str(bad["id"]), a, "validation_file")
            assert (info.value.status_code, info.value.code, info.value.param) == (
                422,
                "file_invalid",
                "validation_file",
            )
            assert info.value.extra["line"] == 2
            # Submitting through the manager checks ownership too.
            with pytest.raises(APIError) as info:
                await m.create(owner=b, request=request(training_file=good["id"]), idempotency_key=None)
            assert info.value.status_code == 404 and info.value.param == "training_file"
            job, _ = await m.create(owner=a, request=request(training_file=good["id"]), idempotency_key=None)
            # In use by an unfinished job: refused, and nothing is removed.
            with pytest.raises(APIError) as info:
                await m.files.delete(str(good["id"]), a)
            assert (info.value.status_code, info.value.code) == (409, "file_in_use")
            assert m.files.path(str(good["id"])).exists()
            await m.cancel(job["id"], owner=a)
            assert (await m.files.delete(str(good["id"]), a))["deleted"] is True
            assert not m.files.path(str(good["id"])).exists()
            files, more = await m.files.list(owner=a, purpose=None, after=None, limit=10)
            assert [f["id"] for f in files] == [bad["id"]] and not more
        finally:
            await m.stop()

    run(body())


def test_an_older_database_gains_the_files_table_and_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "tuning.db"

    async def open_close() -> None:
        s = Store(db)
        await s.open()
        await s.close()

    run(open_close())
    with sqlite3.connect(db) as conn:  # back to the first schema
        conn.execute("ALTER TABLE jobs DROP COLUMN pause_requested_at")
        conn.execute("ALTER TABLE jobs DROP COLUMN resume_from")
        conn.execute("DROP TABLE files")
        conn.execute("PRAGMA user_version = 1")
        # A job stored before preference tuning: its `method` named the adapter.
        conn.execute(
            "INSERT INTO jobs (id, owner, status, model, request, request_hash, hyperparameters, created_at)"
            " VALUES ('ftjob-old', 'key_a', 'succeeded', 'tiny', ?, 'h', '{}', 0)",
            (json.dumps({"model": "tiny", "method": "lora", "seed": 42}),),
        )
    run(open_close())
    run(open_close())  # and again: idempotent
    with sqlite3.connect(db) as conn:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
        assert {"pause_requested_at", "resume_from"} <= cols
        assert conn.execute("SELECT COUNT(*) FROM files").fetchone() == (0,)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        (request,) = conn.execute("SELECT request FROM jobs WHERE id = 'ftjob-old'").fetchone()
        # Read in today's terms: sft with the lora adapter.
        assert json.loads(request) == {"model": "tiny", "method": "sft", "adapter": "lora", "seed": 42}

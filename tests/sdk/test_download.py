"""tunings.download (safe unpacking), events pagination, checkpoints, pause/resume, wait on a paused job, and
their CLI commands, against the stub server."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest

from tests.sdk.objects import checkpoint_body, checkpoint_list, log_page, record
from tests.sdk.stub import Handler, Recorded, StubServer, error, job_body, reply
from tuning_sdk import ArchiveError, ConflictError, NotFoundError, TuningClient, UnprocessableEntityError, cli
from tuning_sdk._transfer import safe_extract

ADAPTER = {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"\0" * 300}


def make_tar(files: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


def gz(data: bytes, *, cut: int | None = None):
    """Serve `data` as application/gzip; with `cut`, announce it all but send `cut` bytes and hang up."""

    def action(h: Handler, req: Recorded) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/gzip")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data if cut is None else data[:cut])
        if cut is not None:
            h.abort()

    return action


def test_download_unpacks_the_adapter(stub: StubServer, client: TuningClient, tmp_path: Path) -> None:
    stub.route("GET", "/v1/tunings.download/", gz(make_tar({**ADAPTER, "sub/tokenizer.json": b"{}"})))
    folder = client.tunings.download("ftjob-1", tmp_path / "a" / "adapter")
    assert folder == tmp_path / "a" / "adapter"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "sub/tokenizer.json",
    ]
    assert (folder / "adapter_model.safetensors").read_bytes() == ADAPTER["adapter_model.safetensors"]
    (req,) = stub.calls("GET", "/v1/tunings.download/")
    assert req.path == "/v1/tunings.download/ftjob-1" and req.query == {}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["adapter"]  # no temporary files left behind

    client.tunings.download("ftjob-1", tmp_path / "ckpt", checkpoint=4)
    assert stub.requests[-1].query == {"checkpoint": ["4"]}
    client.tunings.download("ftjob-1", tmp_path / "final", artifact="adapter")
    assert stub.requests[-1].query == {}  # the default is not sent (a service before artifacts refuses it)


def test_download_of_the_tensorboard_files(stub: StubServer, client: TuningClient, tmp_path: Path) -> None:
    board = {"events.out.tfevents.1764150000.host": b"\0" * 40}
    stub.route("GET", "/v1/tunings.download/", gz(make_tar(board)))
    folder = client.tunings.download("ftjob-1", tmp_path / "runs" / "ftjob-1", artifact="tensorboard")
    assert [p.name for p in folder.iterdir()] == list(board)
    (req,) = stub.calls("GET", "/v1/tunings.download/")
    assert req.path == "/v1/tunings.download/ftjob-1" and req.query == {"artifact": ["tensorboard"]}
    # The service's refusals: no TensorBoard files, or a checkpoint (adapters only); nothing is written.
    stub.route("GET", "/v1/tunings.download/", error(404, "artifact_not_found", "none", param="artifact"))
    with pytest.raises(NotFoundError) as info:
        client.tunings.download("ftjob-2", tmp_path / "none", artifact="tensorboard")
    assert info.value.code == "artifact_not_found"
    stub.route(
        "GET", "/v1/tunings.download/", error(422, "checkpoint_not_applicable", "no", param="checkpoint")
    )
    with pytest.raises(UnprocessableEntityError) as unprocessable:
        client.tunings.download("ftjob-1", tmp_path / "none", checkpoint=4, artifact="tensorboard")
    assert unprocessable.value.param == "checkpoint"
    assert stub.requests[-1].query == {"checkpoint": ["4"], "artifact": ["tensorboard"]}
    assert not (tmp_path / "none").exists()


def test_download_refuses_a_non_empty_folder_unless_overwrite(
    stub: StubServer, client: TuningClient, tmp_path: Path
) -> None:
    stub.route("GET", "/v1/tunings.download/", gz(make_tar(ADAPTER)))
    dest = tmp_path / "adapter"
    dest.mkdir()
    (dest / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        client.tunings.download("ftjob-1", dest)
    assert stub.calls("GET", "/v1/tunings.download/") == []  # refused before downloading anything
    client.tunings.download("ftjob-1", dest, overwrite=True)
    assert sorted(p.name for p in dest.iterdir()) == sorted(ADAPTER)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        client.tunings.download("ftjob-1", tmp_path / "file")


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("files", "extra", "why"),
    [
        ({"../evil.txt": b"pwned"}, None, "outside"),
        ({"ok/../../evil.txt": b"pwned"}, None, "outside"),
        ({"/tmp/evil.txt": b"pwned"}, None, "outside"),
        ({}, [_link("link", "/etc/passwd")], "plain files"),
        ({}, [_link("hard", "../../etc/passwd", tarfile.LNKTYPE)], "plain files"),
    ],
)
def test_download_refuses_members_escaping_the_folder(
    stub: StubServer,
    client: TuningClient,
    tmp_path: Path,
    files: dict[str, bytes],
    extra: list[tarfile.TarInfo] | None,
    why: str,
) -> None:
    stub.route("GET", "/v1/tunings.download/", gz(make_tar({**ADAPTER, **files}, extra=extra)))
    dest = tmp_path / "inner" / "adapter"
    with pytest.raises(ArchiveError, match=why):
        client.tunings.download("ftjob-1", dest)
    # All or nothing: no folder, no partial files, nothing written next to it or above it.
    assert not dest.exists() and list((tmp_path / "inner").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_a_truncated_or_corrupt_download_is_an_archive_error(
    stub: StubServer, client: TuningClient, tmp_path: Path
) -> None:
    data = make_tar({**ADAPTER, "big.bin": bytes(range(256)) * 2000})
    stub.route("GET", "/v1/tunings.download/", gz(data, cut=len(data) // 2))
    with pytest.raises(ArchiveError, match="cut short"):
        client.tunings.download("ftjob-1", tmp_path / "a")
    stub.route("GET", "/v1/tunings.download/", gz(b"not a gzip file"))
    with pytest.raises(ArchiveError, match="could not be unpacked"):
        client.tunings.download("ftjob-1", tmp_path / "b")
    stub.route("GET", "/v1/tunings.download/", gz(make_tar({})))
    with pytest.raises(ArchiveError, match="empty"):
        client.tunings.download("ftjob-1", tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_download_errors_map_to_classes(stub: StubServer, client: TuningClient, tmp_path: Path) -> None:
    stub.route(
        "GET",
        "/v1/tunings.download/",
        error(409, "adapter_not_ready", "job is running"),
        error(404, "checkpoint_not_found", "no checkpoint 7"),
    )
    with pytest.raises(ConflictError) as info:
        client.tunings.download("ftjob-1", tmp_path / "a")
    assert info.value.code == "adapter_not_ready"
    with pytest.raises(NotFoundError):
        client.tunings.download("ftjob-1", tmp_path / "a", checkpoint=7)
    assert list(tmp_path.iterdir()) == []


def test_safe_extract_of_a_local_archive(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tar(ADAPTER))
    out = safe_extract(archive, tmp_path / "x")
    assert sorted(p.name for p in out.iterdir()) == sorted(ADAPTER)


# ---- events, checkpoints, pause/resume ------------------------------------------------------------------


def _events(seqs: list[int], has_more: bool, after: int = 0) -> dict[str, object]:
    return log_page([record(s, "metrics", time=1.0, step=s) for s in seqs], has_more, after)


def test_events_follow_the_cursor_across_pages(stub: StubServer, client: TuningClient) -> None:
    stub.route(
        "GET",
        "/v1/tunings.events/",
        reply(200, _events([1, 2], True)),
        reply(200, _events([5, 6], True)),
        reply(200, _events([], False, after=6)),
    )
    events = client.tunings.events("ftjob-1", limit=2)
    assert len(stub.calls("GET", "/v1/tunings.events/")) == 1  # the first page is fetched by the call
    assert [e.seq for e in events] == [1, 2, 5, 6]
    queries = [r.query for r in stub.calls("GET", "/v1/tunings.events/")]
    assert queries == [{"limit": ["2"]}, {"limit": ["2"], "after": ["2"]}, {"limit": ["2"], "after": ["6"]}]
    stub.route("GET", "/v1/tunings.events/", reply(200, _events([4], False)))
    assert [e["step"] for e in client.tunings.events("ftjob-1", after=3)] == [4]
    assert stub.requests[-1].query == {"after": ["3"]}


def test_events_of_an_unknown_job_raise_at_the_call(stub: StubServer, client: TuningClient) -> None:
    stub.route("GET", "/v1/tunings.events/", error(404, "job_not_found", "no such job"))
    with pytest.raises(NotFoundError):
        client.tunings.events("ftjob-x")


def test_checkpoints_pause_resume(stub: StubServer, client: TuningClient) -> None:
    ckpt = checkpoint_body(4, train_loss=1.5, learning_rate=1e-4, epoch=0.5)
    stub.route("GET", "/v1/tunings.checkpoints/", reply(200, checkpoint_list([ckpt])))
    stub.route("POST", "/v1/tunings.pause/", reply(200, job_body(status="pausing")))
    stub.route("POST", "/v1/tunings.resume/", error(409, "no_checkpoint", "nothing to resume from"))
    (c,) = client.tunings.checkpoints("ftjob-1")
    assert (c.step, c.train_loss, c.eval_loss, c.path) == (4, 1.5, None, "checkpoints/checkpoint-4")
    assert client.tunings.pause("ftjob-1").status == "pausing"
    pause = stub.calls("POST", "/v1/tunings.pause/")[0]
    assert pause.path == "/v1/tunings.pause/ftjob-1" and pause.header("Idempotency-Key")
    with pytest.raises(ConflictError) as info:
        client.tunings.resume("ftjob-1")
    assert info.value.code == "no_checkpoint"


def test_wait_on_a_paused_job(
    stub: StubServer, client: TuningClient, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tuning_sdk")
    # A JSON answer instead of an event stream (e.g. a proxy that buffers): wait polls.
    stub.route("GET", "/v1/tunings.logs/", reply(200, log_page([])))
    stub.route("GET", "/v1/tunings.get/", reply(200, job_body(status="paused")))
    assert client.tunings.wait("ftjob-1", stop_on_pause=True, timeout=5).status == "paused"
    assert not caplog.records
    # Without stop_on_pause a paused job keeps wait waiting, and it says so once per pause.
    stub.route(
        "GET",
        "/v1/tunings.get/",
        reply(200, job_body(status="paused")),
        reply(200, job_body(status="paused")),
        reply(200, job_body(status="paused")),
        reply(200, job_body(status="queued")),
        reply(200, job_body(status="succeeded")),
    )
    stub.requests.clear()
    assert client.tunings.wait("ftjob-1", poll_interval=0.01, timeout=30).status == "succeeded"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "ftjob-1 is paused" in warnings[0] and "resume" in warnings[0]


# ---- tuning jobs events|checkpoints|download|pause|resume ------------------------------------------------


def test_cli_job_artifacts(stub: StubServer, run, tmp_path: Path) -> None:
    stub.route("GET", "/v1/tunings.events/", reply(200, _events([1, 2], False)))
    code, out, _ = run("jobs", "events", "ftjob-1")
    assert code == 0 and len(out.splitlines()) == 2 and "metrics: step 1" in out
    code, out, _ = run("jobs", "events", "ftjob-1", "--json")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2]

    stub.route("GET", "/v1/tunings.checkpoints/", reply(200, checkpoint_list([])))
    assert run("jobs", "checkpoints", "ftjob-1") == (0, "no checkpoints\n", "")

    stub.route("GET", "/v1/tunings.download/", gz(make_tar(ADAPTER)))
    code, out, _ = run("--json", "jobs", "download", "ftjob-1", str(tmp_path / "ad"), "--checkpoint", "4")
    assert code == 0 and json.loads(out)["files"] == sorted(ADAPTER)
    code, _, err = run("jobs", "download", "ftjob-1", str(tmp_path / "ad"))
    assert code == cli.EXIT_USAGE and "not empty" in err
    stub.route("GET", "/v1/tunings.download/", gz(make_tar({"events.out.tfevents.1.h": b"x"})))
    code, out, _ = run(
        "jobs", "download", "ftjob-1", str(tmp_path / "tb"), "--artifact", "tensorboard", "--json"
    )
    assert code == 0 and json.loads(out) == {
        "id": "ftjob-1",
        "artifact": "tensorboard",
        "checkpoint": None,
        "path": str(tmp_path / "tb"),
        "files": ["events.out.tfevents.1.h"],
    }
    assert stub.requests[-1].query == {"artifact": ["tensorboard"]}
    code, out, _ = run("jobs", "download", "ftjob-1", str(tmp_path / "tb2"), "--artifact", "tensorboard")
    assert code == 0 and out == f"unpacked into {tmp_path / 'tb2'}: events.out.tfevents.1.h\n"
    with pytest.raises(SystemExit) as exited:
        run("jobs", "download", "ftjob-1", str(tmp_path / "x"), "--artifact", "logs")
    assert exited.value.code == cli.EXIT_USAGE
    stub.route("GET", "/v1/tunings.download/", gz(make_tar({"../x": b"1"})))
    code, _, err = run("jobs", "download", "ftjob-1", str(tmp_path / "evil"))
    assert code == cli.EXIT_SERVER and "outside" in err

    stub.route("POST", "/v1/tunings.pause/", reply(200, job_body(status="paused")))
    code, out, _ = run("jobs", "pause", "ftjob-1")
    assert code == 0 and "paused" in out
    stub.route("POST", "/v1/tunings.resume/", error(409, "job_not_resumable", "it is running"))
    code, _, err = run("jobs", "resume", "ftjob-1")
    assert code == cli.EXIT_REJECTED and "job_not_resumable" in err

    stub.route("GET", "/v1/tunings.logs/", reply(200, log_page([])))
    stub.route("GET", "/v1/tunings.get/", reply(200, job_body(status="paused")))
    code, out, _ = run("--json", "jobs", "wait", "ftjob-1", "--stop-on-pause", "--no-progress")
    assert code == cli.EXIT_PAUSED and json.loads(out)["status"] == "paused"

"""GET /v1/tunings.download/{id}: the final adapter (or a checkpoint) as a streamed tar.gz that
`PeftModel.from_pretrained` loads once unpacked; the error paths; the streaming writer on its own."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

import pytest

from tests.support.server import ServiceProcess
from tuning_service.files.download import members, tar_gz_stream

# ---- the streaming writer ------------------------------------------------------------------------------


def _collect(folder: Path) -> bytes:
    async def body() -> bytes:
        return b"".join([chunk async for chunk in tar_gz_stream(folder)])

    return asyncio.run(body())


def test_the_stream_is_a_tar_gz_of_the_folder_without_optimizer_state(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "sub" / "x.txt").write_text("x")
    (tmp_path / "trainer_state.pt").write_bytes(b"0" * 100)
    big = bytes(range(256)) * 8192  # 2 MiB: several chunks through the queue
    (tmp_path / "adapter_model.safetensors").write_bytes(big)
    data = _collect(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        assert names == ["adapter_config.json", "adapter_model.safetensors", "sub/x.txt"]
        got = tar.extractfile("adapter_model.safetensors")
        assert got is not None and got.read() == big
        assert all(m.uid == 0 and m.uname == "" for m in tar.getmembers())


def test_members_skip_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "link").symlink_to("/etc/passwd")
    assert [p.name for p in members(tmp_path)] == ["a"]


def test_an_abandoned_stream_stops_the_writer(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 40_000)  # ~10 MB, far more than the queue holds

    async def body() -> None:
        stream = tar_gz_stream(tmp_path)
        first = await stream.__anext__()
        assert first
        await stream.aclose()  # the client went away

    asyncio.run(body())  # returns: neither side is left blocked


# ---- over HTTP -----------------------------------------------------------------------------------------


def test_download_errors(api_service: ServiceProcess) -> None:
    job = api_service.create_job()
    r = api_service.get(f"/v1/tunings.download/{job['id']}")
    assert r.status == 409 and r.error["code"] == "adapter_not_ready"
    assert "checkpoint" in r.error["message"]
    r = api_service.get(f"/v1/tunings.download/{job['id']}?checkpoint=5")
    assert r.status == 404 and r.error["code"] == "checkpoint_not_found" and r.error["param"] == "checkpoint"
    for bad in ("abc", "-1"):
        r = api_service.get(f"/v1/tunings.download/{job['id']}?checkpoint={bad}")
        assert r.status == 400 and r.error["param"] == "checkpoint"
    r = api_service.get(f"/v1/tunings.download/{job['id']}?step=4")  # unknown parameters are refused
    assert r.status == 400 and r.error["param"] == "step"
    r = api_service.get("/v1/tunings.download/ftjob-" + "0" * 24)
    assert r.status == 404 and r.error["code"] == "job_not_found"
    assert api_service.get(f"/v1/tunings.checkpoints/{job['id']}").json() == {
        "object": "list",
        "data": [],
        "has_more": False,
    }
    api_service.post(f"/v1/tunings.cancel/{job['id']}")


@pytest.mark.slow
def test_download_the_adapter_and_a_checkpoint_then_load_and_generate(
    live_service: ServiceProcess, tmp_path: Path
) -> None:
    job = live_service.create_job(
        method="lora",
        hyperparameters={"epochs": 1, "batch_size": 4, "max_seq_length": 64, "max_steps": 8, "save_steps": 4},
    )
    live_service.wait_for(job["id"], "succeeded", timeout=240)
    ckpts = live_service.get(f"/v1/tunings.checkpoints/{job['id']}").json()["data"]
    assert [c["step"] for c in ckpts] == [4]
    c = ckpts[0]
    assert c["object"] == "tuning.checkpoint" and c["path"] == "checkpoints/checkpoint-4"
    assert c["metrics"]["step"] == 4 and isinstance(c["metrics"]["train_loss"], float)
    assert isinstance(c["created_at"], int)

    r = live_service.get(f"/v1/tunings.download/{job['id']}", timeout=120)
    assert r.status == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert f'filename="{job["id"]}-adapter.tar.gz"' in r.headers["content-disposition"]
    adapter = tmp_path / "adapter"
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:gz") as tar:
        tar.extractall(adapter, filter="data")
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    r = live_service.get(f"/v1/tunings.download/{job['id']}?checkpoint=4", timeout=120)
    assert r.status == 200
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:gz") as tar:
        names = tar.getnames()
    assert "adapter_model.safetensors" in names and "trainer_state.pt" not in names

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = live_service.models_dir / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter)
    ids = tok("Spell the number 4.", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id or 0)
    assert out.shape[1] > ids.shape[1]
    # The downloaded adapter is the trained one: its weights equal the server's file.
    served = Path(live_service.get(f"/v1/tunings.get/{job['id']}").json()["adapter_path"])
    assert (adapter / "adapter_model.safetensors").read_bytes() == (
        served / "adapter_model.safetensors"
    ).read_bytes()

"""Files, events, checkpoints, download and pause/resume through the SDK and the CLI against the real service
(uvicorn subprocess, real tiny-model training on the shared `live_service`).

One real training job carries the whole story, to keep the suite fast on 2 cores: it is created from an
uploaded file id, paused mid-run, resumed from its checkpoint, trained to `succeeded`, and its adapter is
downloaded and loaded with `PeftModel.from_pretrained`. The error paths need no training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServiceProcess
from tuning_sdk import (
    ConflictError,
    NotFoundError,
    TuningClient,
    UnprocessableEntityError,
)

REPO = Path(__file__).resolve().parents[2]
SLOW = 900  # an upper bound for a machine shared with other test runs; a quiet one needs seconds
pytestmark = pytest.mark.timeout(1500)
# Long enough that the pause lands mid-run (the tiny model trains ~100 steps/s on a quiet machine).
TOTAL_STEPS = 120
HP = {"epochs": 1, "batch_size": 4, "max_seq_length": 64, "max_steps": TOTAL_STEPS, "save_steps": 40,
      "logging_steps": 1}  # fmt: skip


@pytest.fixture(scope="module")
def client(live_service: ServiceProcess) -> Iterator[TuningClient]:
    """A fresh key: its file and job listings hold only what this module made."""
    with TuningClient(api_key=live_service.new_key("sdk-files"), base_url=live_service.base_url) as c:
        yield c


def _cli(svc: ServiceProcess, key: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNING_")}
    env.update(TUNING_BASE_URL=svc.base_url, TUNING_API_KEY=key)
    return subprocess.run(
        [sys.executable, "-m", "tuning_sdk.cli", *argv], capture_output=True, text=True, timeout=120, env=env
    )


def test_upload_list_get_content(client: TuningClient) -> None:
    data = (REPO / "data" / "train.jsonl").read_bytes()
    f = client.files.upload(REPO / "data" / "train.jsonl")
    assert f.id.startswith("file-") and f.is_processed and f.error is None
    assert (f.filename, f.bytes, f.format, f.num_examples) == ("train.jsonl", len(data), "chat", 300)
    assert client.files.get(f.id) == f
    assert f.id in [x.id for x in client.files.list()]
    assert client.files.content(f.id) == data


def test_a_bad_file_is_stored_with_its_line_and_refused_by_jobs(client: TuningClient, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    f = client.files.upload(bad)
    assert f.status == "error" and f.error is not None
    assert f.error.line == 2 and f.error.code == "invalid_json" and f.num_examples is None
    with pytest.raises(UnprocessableEntityError) as info:
        client.tunings.create(model="tiny-llama", training_file=f.id)
    err = info.value
    assert err.code == "file_invalid" and err.param == "training_file" and f.id in err.message
    assert err.line == 2
    with pytest.raises(NotFoundError) as nf:
        client.tunings.create(model="tiny-llama", training_file="file-" + "0" * 24)
    assert nf.value.code == "file_not_found" and nf.value.param == "training_file"
    with pytest.raises(UnprocessableEntityError) as purpose:
        client.files.upload(bad, purpose="assistants")
    assert purpose.value.param == "purpose"
    assert client.files.delete(f.id).deleted
    with pytest.raises(NotFoundError):
        client.files.get(f.id)


def test_cli_files(live_service: ServiceProcess, tmp_path: Path) -> None:
    key = live_service.new_key("sdk-files-cli")
    up = _cli(live_service, key, "--json", "files", "upload", str(REPO / "data" / "valid.jsonl"))
    assert up.returncode == 0, up.stderr
    f = json.loads(up.stdout)
    assert f["status"] == "processed" and f["num_examples"] == 50
    listed = _cli(live_service, key, "files", "list")
    assert listed.returncode == 0 and f["id"] in listed.stdout
    content = _cli(live_service, key, "files", "content", f["id"])
    assert content.stdout.encode() == (REPO / "data" / "valid.jsonl").read_bytes()
    bad = tmp_path / "empty.jsonl"
    bad.write_bytes(b"")
    refused = _cli(live_service, key, "files", "upload", str(bad))
    assert refused.returncode == 3 and "empty_file" in refused.stdout
    missing = _cli(live_service, key, "files", "get", "file-nope")
    assert missing.returncode == 5 and "file_not_found" in missing.stderr


def test_a_job_from_a_file_id_pauses_resumes_from_its_checkpoint_and_downloads(
    live_service: ServiceProcess, service_env, client: TuningClient, tmp_path: Path
) -> None:
    train = client.files.upload(REPO / "data" / "train.jsonl")
    job = client.tunings.create(
        model="tiny-llama", training_file=train.id, method="lora", hyperparameters=HP, suffix="files"
    )
    assert job.training_file == train.id

    # Pause as soon as the trainer reports its first step (the live stream tells us at once).
    for rec in client.tunings.stream_logs(job.id):
        if rec.type == "metrics":
            paused = client.tunings.pause(job.id)
            assert paused.status in ("pausing", "paused")
            break
    paused = client.tunings.wait(job.id, stop_on_pause=True, timeout=SLOW)
    assert paused.status == "paused", paused.error

    ckpts = client.tunings.checkpoints(job.id)
    assert ckpts and [c.step for c in ckpts] == sorted(c.step for c in ckpts)
    step = ckpts[-1].step
    assert 0 < step < TOTAL_STEPS and ckpts[-1].train_loss is not None
    with pytest.raises(ConflictError) as in_use:  # a paused job still needs its file
        client.files.delete(train.id)
    assert in_use.value.code == "file_in_use"
    with pytest.raises(ConflictError) as not_ready:
        client.tunings.download(job.id, tmp_path / "early")
    assert not_ready.value.code == "adapter_not_ready"
    with pytest.raises(ConflictError):
        client.tunings.pause(job.id)  # already paused

    resumed = client.tunings.resume(job.id)
    assert resumed.status == "queued"
    done = client.tunings.wait(job.id, timeout=SLOW)
    assert done.is_successful, done.error
    assert done.metrics is not None and done.metrics.current_step == TOTAL_STEPS
    assert done.fine_tuned_model == f"ft:tiny-llama:files:{job.id}"

    # Events: the same records however they are paged; the resumed run started at the checkpoint's step.
    events = list(client.tunings.events(job.id))
    assert [e.seq for e in client.tunings.events(job.id, limit=7)] == [e.seq for e in events]
    assert all(e.type != "log" for e in events)
    started = [e for e in events if e.type == "started"]
    assert [s["start_step"] for s in started] == [0, step]
    assert {s["total_steps"] for s in started} == {TOTAL_STEPS}
    statuses = [e["status"] for e in events if e.type == "status"]
    assert "paused" in statuses and statuses[-1] == "succeeded"
    assert any(e.type == "checkpoint" for e in events)

    # The final adapter, and a checkpoint, unpacked into folders that PEFT loads.
    adapter = client.tunings.download(job.id, tmp_path / "adapter")
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "trainer_state.pt" not in names
    ckpt_dir = client.tunings.download(job.id, tmp_path / "ckpt", checkpoint=step)
    assert (ckpt_dir / "adapter_model.safetensors").is_file()
    with pytest.raises(NotFoundError) as nf:
        client.tunings.download(job.id, tmp_path / "nope", checkpoint=TOTAL_STEPS + 1)
    assert nf.value.code == "checkpoint_not_found"

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(service_env.models_dir / "tiny-llama")
    model = PeftModel.from_pretrained(base, adapter)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Spell the number 4."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]

    # The CLI over the same job.
    key = client.api_key
    ck = _cli(live_service, key, "--json", "jobs", "checkpoints", job.id)
    assert ck.returncode == 0, ck.stderr
    final_ckpts = [c.step for c in client.tunings.checkpoints(job.id)]
    assert [c["step"] for c in json.loads(ck.stdout)] == final_ckpts and final_ckpts[0] == step
    ev = _cli(live_service, key, "jobs", "events", job.id)
    assert ev.returncode == 0 and "status: succeeded" in ev.stdout
    dl = _cli(live_service, key, "jobs", "download", job.id, str(tmp_path / "cli-adapter"))
    assert dl.returncode == 0 and (tmp_path / "cli-adapter" / "adapter_config.json").is_file()
    again = _cli(live_service, key, "jobs", "resume", job.id)
    assert again.returncode == 3 and "job_not_resumable" in again.stderr

    # The job has ended: its file can go now.
    assert client.files.delete(train.id).deleted

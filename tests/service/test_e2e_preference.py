"""Preference tuning and from_checkpoint through the real service (uvicorn, SQLite, `accelerate launch` of the
real trainer on the tiny model).

- Uploads detect both preference formats; every bad pair is refused with its own code and line, on upload
  and on create; a method and a data format that do not go together are refused on create.
- The official `openai` client: upload pairs, `fine_tuning.jobs.create(method={"type": "dpo", ...})`, and
  the job succeeds with its rewards in the metrics records.
- SFT, then DPO from the SFT job's adapter: the DPO job's first step already prefers the right answers (its
  reference is the base with the adapter off), where DPO from a fresh adapter starts at exactly log 2.
- from_checkpoint in its three spellings, and every way it is refused: another key's job (404, exactly as
  an unknown one), a checkpoint that is not there, a job with no adapter yet, another base model, another
  LoRA shape.
- A DPO job pauses at a checkpoint and resumes from it, as an SFT job does; a dry run plans the pairs.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import DEV_KEY, OTHER_KEY, ServiceProcess, write_jsonl

pytestmark = pytest.mark.slow

SFT = {"batch_size": 8, "max_seq_length": 64, "max_steps": 40, "learning_rate": 0.003, "save_steps": 20}
DPO = {"batch_size": 8, "max_seq_length": 64, "max_steps": 20, "learning_rate": 0.003, "dpo_beta": 0.5}
PAIRS = "data/preference_train.jsonl"
GOOD = {
    "input": {"messages": [{"role": "user", "content": "What does the cow say?"}]},
    "preferred_output": [{"role": "assistant", "content": "The cow says moo."}],
    "non_preferred_output": [{"role": "assistant", "content": "The cow says woof."}],
}


@pytest.fixture(scope="module")
def svc(service_env: Any) -> Any:
    # A second base model folder (the same weights under another name): an adapter of one is refused on it.
    other = service_env.models_dir / "tiny-llama-2"
    if not other.exists():
        shutil.copytree(service_env.models_dir / "tiny-llama", other)
    service = service_env.start("preference")
    yield service
    service.shutdown()


@pytest.fixture(scope="module")
def sft(svc: ServiceProcess) -> dict[str, Any]:
    job = svc.create_job(adapter="lora", hyperparameters=SFT, suffix="sft")
    done = svc.wait_for(job["id"], {"succeeded", "failed"}, timeout=300)
    assert done["status"] == "succeeded", (done, svc.output()[-3000:])
    return done


def records(svc: ServiceProcess, job_id: str, type_: str, key: str = DEV_KEY) -> list[dict[str, Any]]:
    r = svc.get(f"/v1/tunings.events/{job_id}?limit=1000", key=key)
    assert r.status == 200, r.text
    return [rec for rec in r.json()["data"] if rec["type"] == type_]


def run(svc: ServiceProcess, **body: Any) -> dict[str, Any]:
    job = svc.create_job(**body)
    done = svc.wait_for(job["id"], {"succeeded", "failed"}, timeout=300)
    assert done["status"] == "succeeded", (done, svc.output()[-3000:])
    return done


def upload(svc: ServiceProcess, name: str, rows: list[Any]) -> dict[str, Any]:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    boundary = "----tuning-test"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = svc.request(
        "POST",
        "/v1/files.upload",
        body=form,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status == 200, r.text
    return dict(r.json())


# ---- data ------------------------------------------------------------------------------------------------


def test_uploads_detect_both_preference_formats(svc: ServiceProcess) -> None:
    openai_format = upload(svc, "pairs.jsonl", [GOOD, GOOD])
    assert (openai_format["status"], openai_format["format"], openai_format["num_examples"]) == (
        "processed",
        "preference",
        2,
    )
    plain = {
        "prompt": "What does the cow say?",
        "chosen": "Moo.",
        "rejected": [GOOD["non_preferred_output"][0]],
    }
    other = upload(svc, "plain.jsonl", [plain])
    assert (other["status"], other["format"]) == ("processed", "chosen_rejected")


BAD_PAIRS = [
    ({**GOOD, "preferred_output": []}, "missing_chosen"),
    ({k: v for k, v in GOOD.items() if k != "preferred_output"}, "missing_chosen"),
    ({**GOOD, "non_preferred_output": GOOD["preferred_output"]}, "identical_outputs"),
    ({k: v for k, v in GOOD.items() if k != "input"}, "missing_prompt"),
    ({**GOOD, "preferred_output": [{"role": "user", "content": "moo"}]}, "invalid_output_role"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "missing_prompt"),
    ({"prompt": "q", "chosen": "a", "rejected": " a "}, "identical_outputs"),
]


@pytest.mark.parametrize(("row", "code"), BAD_PAIRS)
def test_each_bad_pair_has_its_code_and_line_on_upload_and_on_create(
    svc: ServiceProcess, service_env: Any, row: dict[str, Any], code: str
) -> None:
    good = (
        GOOD
        if "input" in row or "preferred_output" in row or "non_preferred_output" in row
        else {
            "prompt": "q",
            "chosen": "a",
            "rejected": "b",
        }
    )
    rows = [good, good, row]
    stored = upload(svc, "bad.jsonl", rows)
    assert stored["status"] == "error" and stored["error"]["code"] == code and stored["error"]["line"] == 3
    # The same file named by path: refused on create, with the same code and line, and nothing is made.
    write_jsonl(service_env.files_root / "data" / f"bad-{code}.jsonl", rows)
    before = svc.get("/v1/tunings.list?limit=100").json()["data"]
    r = svc.post(
        "/v1/tunings.create",
        {"model": "tiny-llama", "training_file": f"data/bad-{code}.jsonl", "method": "dpo"},
    )
    err = r.json()["error"]
    assert (r.status, err["code"], err["line"], err["param"]) == (422, code, 3, "training_file"), r.text
    assert "line 3" in err["message"]
    assert svc.get("/v1/tunings.list?limit=100").json()["data"] == before


@pytest.mark.parametrize(
    ("method", "training_file", "fragment"),
    [("dpo", "data/train.jsonl", "trains on preference pairs"), ("sft", PAIRS, "holds preference pairs")],
)
def test_a_method_and_a_data_format_that_do_not_match_are_refused_on_create(
    svc: ServiceProcess, method: str, training_file: str, fragment: str
) -> None:
    r = svc.post(
        "/v1/tunings.create", {"model": "tiny-llama", "training_file": training_file, "method": method}
    )
    err = r.json()["error"]
    assert (r.status, err["code"], err["param"]) == (422, "format_mismatch", "training_file"), r.text
    assert fragment in err["message"]
    # An uploaded file's format is checked the same way.
    f = upload(svc, "p.jsonl", [GOOD])
    r = svc.post("/v1/tunings.create", {"model": "tiny-llama", "training_file": f["id"], "method": "sft"})
    assert (r.status, r.json()["error"]["code"]) == (422, "format_mismatch"), r.text


def test_a_legacy_method_and_a_contradicting_adapter_are_refused(svc: ServiceProcess) -> None:
    r = svc.post(
        "/v1/tunings.create",
        {"model": "tiny-llama", "training_file": "data/train.jsonl", "method": "lora", "adapter": "qlora"},
    )
    err = r.json()["error"]
    assert (r.status, err["code"], err["param"]) == (422, "invalid_value", "adapter"), r.text


# ---- training --------------------------------------------------------------------------------------------


def test_the_openai_client_runs_a_dpo_job(svc: ServiceProcess) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=svc.base_url + "/v1", api_key=DEV_KEY, max_retries=0, timeout=60)
    with open(svc_files_root(svc) / PAIRS, "rb") as fh:
        f = client.files.create(file=("pairs.jsonl", fh), purpose="fine-tune")
    hp = {"beta": 0.5, "n_epochs": 1, "batch_size": 8, "max_steps": 6, "max_seq_length": 64}
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=f.id,
        method={"type": "dpo", "dpo": {"hyperparameters": hp}},  # type: ignore[typeddict-unknown-key]
        extra_body={"tuning_method": "lora"},
    )
    assert job.method is not None and job.method.type == "dpo"
    done = svc.wait_for(job.id, {"succeeded", "failed"}, timeout=300)
    assert done["status"] == "succeeded", (done, svc.output()[-3000:])
    assert (done["method"], done["adapter"], done["hyperparameters"]["dpo_beta"]) == ("dpo", "lora", 0.5)
    again = client.fine_tuning.jobs.retrieve(job.id)
    assert again.status == "succeeded" and again.method is not None and again.method.dpo is not None
    assert again.method.dpo.hyperparameters is not None and again.method.dpo.hyperparameters.beta == 0.5
    steps = records(svc, job.id, "metrics")
    assert len(steps) == 6 and all("rewards_accuracy" in r and "rewards_margin" in r for r in steps)


def svc_files_root(svc: ServiceProcess) -> Path:
    return Path(svc.files_root)


def test_dpo_from_the_sft_adapter_starts_from_its_weights(svc: ServiceProcess, sft: dict[str, Any]) -> None:
    body = {"training_file": PAIRS, "method": "dpo", "hyperparameters": {**DPO, "logging_steps": 1}}
    fresh = run(svc, adapter="lora", **body)
    tuned = run(svc, from_checkpoint=sft["id"], **body)
    assert tuned["from_checkpoint"] == sft["id"] and fresh["from_checkpoint"] is None
    # The adapter's shape is the SFT job's; the adapter is LoRA whatever the default (qlora) says.
    assert tuned["hyperparameters"]["lora_r"] == sft["hyperparameters"]["lora_r"]
    first_fresh = records(svc, fresh["id"], "metrics")[0]
    first_tuned = records(svc, tuned["id"], "metrics")[0]
    # A fresh adapter is a no-op: the policy is the reference, the loss exactly log 2, the rewards zero.
    assert first_fresh["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first_fresh["rewards_margin"] == 0 and first_fresh["rewards_accuracy"] == 0
    # The SFT weights already prefer the right answers to the base's: a positive margin from step 1.
    assert first_tuned["rewards_margin"] > 0.1 and first_tuned["rewards_accuracy"] > 0.5, first_tuned
    assert first_tuned["loss"] < math.log(2) - 0.05, first_tuned
    started = records(svc, tuned["id"], "started")[0]
    assert started["model_setup"]["init_adapter"].endswith("/init_adapter")
    source = json.loads((Path(started["model_setup"]["init_adapter"]) / "source.json").read_text())
    assert source == {"job_id": sft["id"], "step": None}

    # And it goes on from there: over the run, a larger margin than DPO from scratch.
    def mean_margin(job: dict[str, Any]) -> float:
        steps = records(svc, job["id"], "metrics")
        return sum(r["rewards_margin"] for r in steps) / len(steps)

    assert mean_margin(tuned) > mean_margin(fresh) > 0


def test_from_checkpoint_takes_a_step_and_an_openai_checkpoint_id(
    svc: ServiceProcess, sft: dict[str, Any]
) -> None:
    job_hex = sft["id"].removeprefix("ftjob-")
    for ref in (f"{sft['id']}:20", f"ftckpt-{job_hex}-20"):
        r = svc.post(
            "/v1/tunings.create",
            {
                "model": "tiny-llama",
                "training_file": PAIRS,
                "method": "dpo",
                "from_checkpoint": ref,
                "dry_run": True,
            },
        )
        assert r.status == 200, r.text
        est = r.json()
        assert (est["object"], est["method"], est["num_examples"]) == ("tuning.estimate", "dpo", 200)
    # The OpenAI route's extension, with OpenAI's checkpoint id: a real job from the step-20 checkpoint.
    r = svc.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "tiny-llama",
            "training_file": PAIRS,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"max_steps": 2, "max_seq_length": 64}}},
            "from_checkpoint": f"ftckpt-{job_hex}-20",
        },
    )
    assert r.status == 200, r.text
    assert r.json()["tuning"]["from_checkpoint"] == f"ftckpt-{job_hex}-20"
    job_id = r.json()["id"]
    done = svc.wait_for(job_id, {"succeeded", "failed"}, timeout=300)
    assert done["status"] == "succeeded", done
    started = records(svc, job_id, "started")[0]
    source = json.loads((Path(started["model_setup"]["init_adapter"]) / "source.json").read_text())
    assert source == {"job_id": sft["id"], "step": 20}


def test_from_checkpoint_refusals(svc: ServiceProcess, sft: dict[str, Any]) -> None:
    def create(key: str = DEV_KEY, **body: Any) -> Any:
        full = {"model": "tiny-llama", "training_file": PAIRS, "method": "dpo", **body}
        return svc.post("/v1/tunings.create", full, key=key)

    before = len(svc.get("/v1/tunings.list?limit=100").json()["data"])
    unknown = create(from_checkpoint="ftjob-" + "0" * 24)
    theirs = create(OTHER_KEY, from_checkpoint=sft["id"])
    for r in (unknown, theirs):
        assert (r.status, r.json()["error"]["code"], r.json()["error"]["param"]) == (
            404,
            "checkpoint_not_found",
            "from_checkpoint",
        ), r.text
    # Another key's job and an unknown one are told apart by nothing but the id they repeat.
    assert theirs.json()["error"]["message"] == unknown.json()["error"]["message"].replace(
        "ftjob-" + "0" * 24, sft["id"]
    )
    missing = create(from_checkpoint=f"{sft['id']}:7")
    assert (missing.status, missing.json()["error"]["code"]) == (404, "checkpoint_not_found")
    assert "checkpoints: 20" in missing.json()["error"]["message"]
    other_base = create(model="tiny-llama-2", from_checkpoint=sft["id"])
    err = other_base.json()["error"]
    assert (other_base.status, err["code"], err["param"]) == (
        422,
        "checkpoint_model_mismatch",
        "from_checkpoint",
    )
    shape = create(from_checkpoint=sft["id"], hyperparameters={"lora_r": 4})
    err = shape.json()["error"]
    assert (shape.status, err["code"], err["param"]) == (422, "checkpoint_mismatch", "hyperparameters.lora_r")
    # A job without a final adapter yet (here: cancelled before it trained).
    cancelled = svc.create_job(hyperparameters={**SFT, "max_steps": 100000})
    svc.post(f"/v1/tunings.cancel/{cancelled['id']}")
    svc.wait_for(cancelled["id"], {"cancelled"}, timeout=120)
    not_ready = create(from_checkpoint=cancelled["id"])
    assert (not_ready.status, not_ready.json()["error"]["code"]) == (409, "checkpoint_not_ready")
    malformed = create(from_checkpoint="ftjob-x:y")
    assert malformed.status == 422 and malformed.json()["error"]["param"] == "from_checkpoint"
    # Nothing was made by any refusal (the cancelled job is the only new one), and no folder was left.
    assert len(svc.get("/v1/tunings.list?limit=100").json()["data"]) == before + 1
    mine = {j["id"] for j in svc.get("/v1/tunings.list?limit=100").json()["data"]}
    assert {d.name for d in (Path(svc.data_dir) / "jobs").iterdir()} <= mine


def test_a_dpo_job_pauses_at_a_checkpoint_and_resumes_from_it(svc: ServiceProcess) -> None:
    job = svc.create_job(
        training_file=PAIRS,
        method="dpo",
        adapter="lora",
        hyperparameters={**DPO, "max_steps": 100000, "epochs": 1000, "logging_steps": 1},
    )
    svc.wait_for(job["id"], {"running"}, timeout=120)
    deadline_steps = 0
    for _ in range(600):
        deadline_steps = len(records(svc, job["id"], "metrics"))
        if deadline_steps >= 2:
            break
        time.sleep(0.1)
    assert svc.post(f"/v1/tunings.pause/{job['id']}").status == 200
    paused = svc.wait_for(job["id"], {"paused"}, timeout=120)
    (interrupted,) = records(svc, job["id"], "interrupted")
    step = interrupted["step"]
    assert step >= 2 and paused["status"] == "paused"
    assert svc.post(f"/v1/tunings.resume/{job['id']}").status == 200
    for _ in range(600):
        started = records(svc, job["id"], "started")
        if len(started) == 2 and records(svc, job["id"], "metrics")[-1]["step"] > step:
            break
        time.sleep(0.1)
    assert started[1]["start_step"] == step and started[1]["method"] == "dpo"
    resumed = [r for r in records(svc, job["id"], "metrics") if r["step"] > step]
    assert resumed and resumed[0]["step"] == step + 1 and "rewards_margin" in resumed[0]
    svc.post(f"/v1/tunings.cancel/{job['id']}")
    svc.wait_for(job["id"], {"cancelled"}, timeout=120)

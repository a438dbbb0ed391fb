"""Real training through `accelerate launch` on CPU with the tiny model: qlora and lora, one run each,
shared by the assertions below (module-scoped fixtures)."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import events, launch, of_type

# Each module fixture is one real training run (~15 s idle); leave room for a busy machine.
pytestmark = pytest.mark.timeout(600)


class Run:
    def __init__(self, out: Path, proc: subprocess.CompletedProcess[str]) -> None:
        self.out = out
        self.proc = proc
        self.events = events(out)

    def one(self, type_: str) -> dict[str, Any]:
        (record,) = of_type(self.events, type_)
        return record

    def losses(self) -> list[float]:
        return [r["loss"] for r in of_type(self.events, "metrics")]


@pytest.fixture(scope="module")
def qlora_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, train_file: Path, valid_file: Path
) -> Run:
    """The issue's done-check command (qlora by default, default learning rate, one epoch), plus a
    validation file and a checkpoint cadence."""
    out = tmp_path_factory.mktemp("qlora") / "out"
    proc = launch(
        "--model",
        str(tiny_model_dir),
        "--training-file",
        str(train_file),
        "--output-dir",
        str(out),
        "--epochs",
        "1",
        "--validation-file",
        str(valid_file),
        "--save-steps",
        "50",
        "--eval-steps",
        "25",
    )
    return Run(out, proc)


@pytest.fixture(scope="module")
def lora_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, train_file: Path, valid_file: Path
) -> Run:
    out = tmp_path_factory.mktemp("lora") / "out"
    job = {
        "model": str(tiny_model_dir),
        "training_file": str(train_file),
        "validation_file": str(valid_file),
        "output_dir": str(out),
        "method": "lora",
        "hyperparameters": {
            "epochs": "auto",
            "batch_size": "auto",
            "max_steps": 60,
            "learning_rate": 2e-3,
            "gradient_accumulation_steps": 2,
        },
    }
    config = out.parent / "job.json"
    config.write_text(json.dumps(job))
    return Run(out, launch("--config", str(config)))


@pytest.fixture(params=["qlora", "lora"])
def run(request: pytest.FixtureRequest) -> Run:
    result: Run = request.getfixturevalue(f"{request.param}_run")
    return result


def test_run_completes_with_a_complete_event_stream(run: Run) -> None:
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    types = [r["type"] for r in run.events]
    assert types[0] == "started" and types[-1] == "completed"
    assert sum(t in ("completed", "failed", "interrupted") for t in types) == 1
    assert all(isinstance(r["time"], float) for r in run.events)
    # (conftest.events validated every record against the protocol's models: tuning_trainer/records.py.)
    started = run.one("started")
    assert started["start_step"] == 0 and started["num_examples"] == 300
    assert 0 < started["trainable_params"] < started["total_params"]
    assert {"torch", "transformers", "peft", "accelerate", "bitsandbytes"} <= started["versions"].keys()
    metrics = of_type(run.events, "metrics")
    assert [m["step"] for m in metrics] == list(range(1, started["total_steps"] + 1))
    assert all(m["tokens_per_second"] > 0 and m["peak_memory_mb"] > 0 for m in metrics)
    assert metrics[-1]["tokens_seen"] > metrics[0]["tokens_seen"] > 0
    completed = run.one("completed")
    assert (
        completed["total_steps"] == started["total_steps"] and completed["final_loss"] == metrics[-1]["loss"]
    )
    assert completed["duration_seconds"] > 0
    # Human-readable progress goes to stdout, never to events.jsonl; no progress bars in the stream.
    assert "[tuning_trainer] step 1/" in run.proc.stdout
    assert "\r" not in run.proc.stdout + run.proc.stderr
    assert json.loads((run.out / "config.json").read_text())["method"] == started["config"]["method"]


def test_loss_falls_clearly(run: Run) -> None:
    losses = run.losses()
    head, tail = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
    assert tail < 0.85 * head, (head, tail)


def test_qlora_setup_is_recorded(qlora_run: Run) -> None:
    started = qlora_run.one("started")
    assert (started["method"], started["adapter"]) == ("sft", "qlora") and started["model_setup"][
        "quantization"
    ] == "nf4-double-quant"
    # "auto": the estimate for the tiny model is far below this machine's memory, so no recomputation.
    assert started["model_setup"]["gradient_checkpointing"] is False
    # On CPU: the process's own libraries (memory.CPU_PROCESS_OVERHEAD, 512 MiB) and a few MiB of training.
    assert 512 < started["model_setup"]["estimated_peak_memory_mb"] < 600
    assert started["attn_implementation"] == "sdpa"  # "auto" on CPU
    assert 0 < started["padding_efficiency"] <= 1 and started["micro_batch_tokens"] > 0
    assert 0 < started["trainable_tokens"] < started["num_tokens"]  # assistant tokens only
    assert started["model_setup"]["compute_dtype"] == "float32"  # CPU: no bf16 compute here
    assert started["resolved_auto"] == {"batch_size": 4} and started["total_steps"] == 75


def test_eval_and_checkpoints(qlora_run: Run) -> None:
    evals = of_type(qlora_run.events, "eval")
    assert [e["step"] for e in evals] == [25, 50, 75]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    (ckpt,) = of_type(qlora_run.events, "checkpoint")
    assert ckpt["step"] == 50 and Path(ckpt["path"]) == qlora_run.out / "checkpoints" / "checkpoint-50"
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.pt", "tokenizer.json"} <= {
        p.name for p in Path(ckpt["path"]).iterdir()
    }
    assert qlora_run.one("completed")["final_eval_loss"] == evals[-1]["eval_loss"]


def test_auto_resolution_and_accumulation_are_recorded(lora_run: Run) -> None:
    started = lora_run.one("started")
    assert started["resolved_auto"] == {"epochs": 5, "batch_size": 4}
    assert started["config"]["hyperparameters"]["epochs"] == 5
    assert started["config"]["hyperparameters"]["batch_size"] == 4
    # 300 examples / batch 4 = 75 batches, 2 per step -> 38 steps an epoch; max_steps=60 -> 2 epochs.
    assert (started["steps_per_epoch"], started["total_steps"], started["total_epochs"]) == (38, 60, 2)
    assert json.loads((lora_run.out / "config.json").read_text())["hyperparameters"]["batch_size"] == 4
    # Evaluated at the end of epoch 1 and, since max_steps ends the run mid-epoch, once more at the end.
    assert [e["step"] for e in of_type(lora_run.events, "eval")] == [38, 60]


def test_adapter_reloads_and_generates(run: Run, tiny_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(run.one("completed")["adapter_path"])
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in adapter.iterdir()
    }
    tok = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, adapter)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What does the dog say?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    # The adapter changed the model: its logits differ from the base's.
    with torch.no_grad():
        tuned = model(**prompt).logits
        with model.disable_adapter():
            plain = model(**prompt).logits
    assert not torch.allclose(tuned, plain)


def test_merge_output_loads(run: Run, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuning_trainer.merge import main as merge_main

    adapter = run.one("completed")["adapter_path"]
    assert merge_main(["--adapter", adapter, "--out", str(tmp_path / "merged")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert model.dtype == torch.bfloat16
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    ids = tok("What does the cat say?", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_tiny_model_shape_and_files(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (tiny_model_dir / name).is_file(), name
    assert "{% generation %}" in (tiny_model_dir / "chat_template.jinja").read_text()


def test_tiny_model_loads_and_masks_assistant_turns(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    first = json.loads((REPO_ROOT / "data" / "train.jsonl").read_text().splitlines()[0])
    enc = tok.apply_chat_template(
        first["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    answer = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(answer) == first["messages"][-1]["content"] + "<|im_end|>"
    # The words of the data are whole tokens, not bytes: the tokenizer was trained for them.
    assert len(tok("The cat says meow.")["input_ids"]) <= 8
    out = model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 1


def test_data_files_are_chat_and_deterministic(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tuning_trainer.data import validate_file

    for name, n in (("train.jsonl", 300), ("valid.jsonl", 50)):
        summary = validate_file(REPO_ROOT / "data" / name)
        assert (summary.format, summary.num_examples) == ("chat", n)
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_data.py"), "--out", str(tmp_path)], check=True
    )
    assert (tmp_path / "train.jsonl").read_bytes() == (REPO_ROOT / "data" / "train.jsonl").read_bytes()

"""merge.py: a merged model computes what base + adapter computed, and loads without peft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuning_trainer.merge import main as merge_main


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: random non-zero B, so the adapter really changes the outputs.
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_merged_model_matches_base_plus_adapter(
    adapter_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert (
        merge_main(["--adapter", str(adapter_dir), "--out", str(tmp_path / "m"), "--dtype", "float32"]) == 0
    )
    ids = torch.arange(3, 40).view(1, -1)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        expected, got, base = peft_model(ids).logits, merged(ids).logits, plain(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_base_override_and_errors(adapter_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    assert (
        merge_main(
            ["--adapter", str(adapter_dir), "--out", str(tmp_path / "m"), "--base", str(tiny_model_dir)]
        )
        == 0
    )
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
    assert merge_main(["--adapter", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert (
        merge_main(["--adapter", str(adapter_dir), "--out", str(tmp_path / "y"), "--base", "/no/such/model"])
        == 2
    )

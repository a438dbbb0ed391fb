"""modelling.py: where a model comes from, and the bitsandbytes CPU 4-bit gradient trap."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuning_trainer.config import Hyperparameters, JobConfig
from tuning_trainer.errors import TrainerError
from tuning_trainer.modelling import resolve_model


def test_local_directory(tmp_path: Path) -> None:
    src = resolve_model(str(tmp_path))
    assert (src.kind, src.location) == ("local", str(tmp_path.resolve()))


def test_name_under_the_models_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny-llama").mkdir()
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.setenv("TUNING_MODELS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path / "org")  # "name" must not be found relative to the working directory instead
    assert resolve_model("tiny-llama").location == str((tmp_path / "tiny-llama").resolve())
    assert resolve_model("org/name").location == str((tmp_path / "org" / "name").resolve())


@pytest.mark.parametrize("name", ["/nonexistent/model", "./models/missing", "../x", "a/b/c", "bad name!"])
def test_missing_paths_say_not_found(name: str) -> None:
    with pytest.raises(TrainerError) as info:
        resolve_model(name)
    assert info.value.code == "model_not_found" and info.value.exit_code == 2
    assert "not found" in info.value.message


def test_a_file_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(TrainerError) as info:
        resolve_model(str(tmp_path / "f"))
    assert "not a directory" in info.value.message


def test_hub_id_offline_is_unavailable_and_online_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrainerError) as info:
        resolve_model("meta-llama/Not-Cached-Anywhere")
    assert info.value.code == "model_unavailable"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    src = resolve_model("meta-llama/Not-Cached-Anywhere")
    assert (src.kind, src.location) == ("hub", "meta-llama/Not-Cached-Anywhere")


# ---- the CPU 4-bit gradient trap -------------------------------------------------------------------------


def _lora_grads(tiny_model_dir: Path, *, eval_first: bool) -> dict[str, object]:
    """Load the tiny model the way the trainer does (qlora), optionally run a no-grad eval forward first,
    then one training forward/backward; return the LoRA gradients."""
    import torch

    from tuning_trainer.modelling import ModelSource, load_model

    cfg = JobConfig(
        model=str(tiny_model_dir),
        training_file="-",
        output_dir="-",
        method="qlora",
        hyperparameters=Hyperparameters(lora_dropout=0.0, gradient_checkpointing=False),
    )
    torch.manual_seed(0)
    model, _ = load_model(cfg, ModelSource("local", str(tiny_model_dir)), torch.device("cpu"))
    ids = torch.arange(5, 37).view(2, 16)
    if eval_first:
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
        model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.fixture
def avx512_bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make bitsandbytes behave as on a CPU with AVX512-BF16 (where it enables the inference repacking)."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def test_eval_forward_does_not_corrupt_4bit_gradients(tiny_model_dir: Path, avx512_bf16_cpu: None) -> None:
    import torch

    reference = _lora_grads(tiny_model_dir, eval_first=False)
    after_eval = _lora_grads(tiny_model_dir, eval_first=True)
    assert reference.keys() == after_eval.keys()
    # lora_B starts at zero, so lora_A gets no gradient on the first step; lora_B of the first layer does,
    # and only through the backward pass of every 4-bit layer above it.
    first_layer = [n for n in reference if "layers.0." in n and "lora_B" in n]
    assert first_layer and all(reference[n].abs().sum() > 0 for n in first_layer)  # type: ignore[attr-defined]
    for name in reference:
        torch.testing.assert_close(after_eval[name], reference[name], msg=name)


def test_the_trap_is_real_without_the_fix(
    tiny_model_dir: Path, avx512_bf16_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: with the fix disabled the same sequence loses gradients, so the test above can catch it."""
    import torch

    from tuning_trainer import modelling

    monkeypatch.setattr(modelling, "disable_cpu_4bit_repacking", lambda model: 0)
    reference = _lora_grads(tiny_model_dir, eval_first=False)
    after_eval = _lora_grads(tiny_model_dir, eval_first=True)
    differs = [n for n in reference if not torch.allclose(after_eval[n], reference[n])]  # type: ignore[arg-type]
    assert any("layers.0." in n for n in differs)

"""runplan.py: the choices a run makes before loading a weight (the recipe and the dry run share them)."""

from __future__ import annotations

import pytest

from tuning_trainer.errors import TrainerError
from tuning_trainer.runplan import Device, choose_attn_implementation

CPU = Device(kind="cpu", memory_bytes=2**34, dtype_bytes=4)
GPU = Device(kind="cuda", memory_bytes=80 * 2**30, dtype_bytes=2, label="cuda:0 (H100)")
GPU_FA2 = Device(kind="cuda", memory_bytes=80 * 2**30, dtype_bytes=2, has_flash_attn=True)


@pytest.mark.parametrize(
    ("requested", "device", "chosen"),
    [
        ("auto", CPU, "sdpa"),
        ("auto", GPU, "sdpa"),  # no flash-attn installed
        ("auto", GPU_FA2, "flash_attention_2"),
        ("eager", CPU, "eager"),
        ("sdpa", GPU_FA2, "sdpa"),
        ("flex_attention", GPU, "flex_attention"),
    ],
)
def test_auto_picks_flash_attention_only_where_it_runs(requested: str, device: Device, chosen: str) -> None:
    assert choose_attn_implementation(requested, device) == chosen


@pytest.mark.parametrize(
    ("requested", "device", "words"),
    [
        ("flash_attention_2", CPU, "needs a GPU, the flash-attn package"),
        ("flash_attention_2", GPU, "needs a GPU, the flash-attn package"),
        ("flex_attention", CPU, "cannot compile it for varying batch shapes"),
    ],
)
def test_a_kernel_the_device_cannot_run_is_refused_naming_the_field(
    requested: str, device: Device, words: str
) -> None:
    with pytest.raises(TrainerError) as info:
        choose_attn_implementation(requested, device)
    err = info.value
    assert err.code == "invalid_config" and err.exit_code == 2 and words in err.message
    assert err.extra["param"] == "hyperparameters.attn_implementation"

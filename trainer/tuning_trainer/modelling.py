"""Model resolution (cheap, before any heavy import) and loading for LoRA / QLoRA.

Resolution order for `model`: an existing local directory; a name under $TUNING_MODELS_DIR (default ./models);
a hub id. A path that does not exist is reported as "not found" (never the hub's connection error), and a hub
id that cannot be reached (HF_HUB_OFFLINE=1 and not in the local cache) fails at once as `model_unavailable`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import JobConfig
from .errors import EXIT_USER_ERROR, MODEL_NOT_FOUND, MODEL_UNAVAILABLE, TrainerError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_OFFLINE_VALUES = ("1", "true", "yes", "on")


@dataclass
class ModelSource:
    """Where the base model comes from: `kind` is "local" (a directory) or "hub" (an id)."""

    kind: str
    location: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "location": self.location}


def models_dir() -> Path:
    return Path(os.environ.get("TUNING_MODELS_DIR") or "models")


def hub_offline() -> bool:
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(v, "").lower() in _OFFLINE_VALUES for v in names)


def resolve_model(name: str) -> ModelSource:
    """Find the model without importing the ML stack. Raises TrainerError (exit 2) when it cannot be used."""
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelSource("local", str(path.resolve()))
    in_models = models_dir() / name
    if _HUB_ID.match(name) and in_models.is_dir():
        return ModelSource("local", str(in_models.resolve()))
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path or not _HUB_ID.match(name) or path.exists():
        reason = "is not a directory" if path.exists() else "not found"
        raise TrainerError(
            MODEL_NOT_FOUND,
            f"model {name!r} {reason}: expected a model directory, a name under {models_dir()}, or a hub id",
            EXIT_USER_ERROR,
        )
    if hub_offline() and not _in_hub_cache(name):
        raise TrainerError(
            MODEL_UNAVAILABLE,
            f"model {name!r} is not a local directory, not in {models_dir()}, and not in the hub cache; "
            "the hub is unreachable (HF_HUB_OFFLINE=1). Download it first or pass a local path.",
            EXIT_USER_ERROR,
        )
    return ModelSource("hub", name)


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


# ---- loading (imports the ML stack) ----------------------------------------------------------------------


def compute_dtype(device: Any) -> Any:
    """bf16 where the device supports it, else fp16 on CUDA, else fp32 (CPU)."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def disable_cpu_4bit_repacking(model: Any) -> int:
    """Keep bitsandbytes 4-bit gradients exact on CPUs with AVX512-BF16.

    On such CPUs any no-grad forward of a `Linear4bit` in eval mode (an eval loop, `generate`) repacks its
    weights into an inference layout, and from then on backward silently drops the gradients flowing into
    earlier layers: the loss still falls, so nothing looks wrong. Turning the repacking off on every module
    right after loading keeps training exact. Returns how many modules were changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_tokenizer(location: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of the loss, so reusing EOS (or UNK) as padding is harmless.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def fsdp_launch() -> bool:
    """True in a process started by `accelerate launch --use_fsdp` (launch.FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes")


def quantization_config(dtype: Any, device: Any) -> Any:
    """QLoRA's 4-bit base: NF4 with double quantization, computing in `dtype`."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # On a GPU stored in the compute dtype rather than uint8, so that FSDP can shard the 4-bit
        # weights with the rest (it needs one dtype); the same bytes either way.
        bnb_4bit_quant_storage=dtype if device.type == "cuda" else torch.uint8,
    )


def lora_config(hp: Any) -> Any:
    """The adapter the hyperparameters ask for."""
    from peft import LoraConfig

    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_model(
    cfg: JobConfig,
    source: ModelSource,
    device: Any,
    *,
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Load the base model for cfg.adapter and wrap it in a LoRA adapter: a fresh one, or cfg.init_adapter's
    weights and shape (trainable, under the name "default" as a fresh one). Returns (peft model, info).

    Nothing of the base is upcast: the frozen weights, the embeddings and the output head stay in the compute
    dtype (peft's prepare_model_for_kbit_training would make every non-quantized one fp32: 4 GB more for an
    8B Llama's 128k-vocabulary embeddings and head), and the RMS norms compute in fp32 inside the model
    anyway. Only the LoRA weights are fp32 (peft's default), for the optimizer's sake.
    """
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    hp = cfg.hyperparameters
    dtype = compute_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    if not fsdp_launch():
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    # Under FSDP no device_map: transformers sees the launch (ACCELERATE_USE_FSDP) and, with
    # cpu_ram_efficient_loading, loads the weights on rank 0's CPU only; accelerate shards and places them.
    if cfg.adapter == "qlora":
        kwargs["quantization_config"] = quantization_config(dtype, device)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except OSError as exc:
        if source.kind == "hub":
            raise TrainerError(
                MODEL_UNAVAILABLE, f"model {source.location!r} could not be fetched: {exc}", EXIT_USER_ERROR
            ) from None
        raise TrainerError(
            MODEL_NOT_FOUND, f"model {source.location!r} could not be loaded: {exc}", EXIT_USER_ERROR
        ) from None
    repacking_disabled = disable_cpu_4bit_repacking(model) if cfg.adapter == "qlora" else 0
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The frozen embeddings' output needs a gradient for the checkpointed layers to backpropagate into.
        model.enable_input_require_grads()
    model.config.use_cache = False
    if cfg.init_adapter is not None:
        frozen_copy = cfg.method == "dpo" and hp.dpo_reference == "initial"
        model = _load_init_adapter(model, cfg.init_adapter, reference=frozen_copy)
    else:
        model = get_peft_model(model, lora_config(hp))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = _count_params(model)
    info = {
        "trainable_params": trainable,
        "total_params": total,
        "compute_dtype": str(dtype).replace("torch.", ""),
        "gradient_checkpointing": gradient_checkpointing,
        "attn_implementation": attn_implementation,
        "quantization": "nf4-double-quant" if cfg.adapter == "qlora" else None,
        "cpu_4bit_repacking_disabled": repacking_disabled,
        "init_adapter": cfg.init_adapter,
    }
    return model, info


def _load_init_adapter(model: Any, path: str, *, reference: bool) -> Any:
    """The base wrapped in the adapter saved at `path`, trainable: the run continues from its weights. With
    `reference`, the same weights again as a frozen second adapter (objective.REFERENCE_ADAPTER), for DPO's
    reference; the trained one stays active."""
    from peft import PeftModel

    from .objective import REFERENCE_ADAPTER

    if not (Path(path) / "adapter_config.json").is_file():
        raise TrainerError(
            "invalid_config",
            f"init_adapter {path!r} is not an adapter folder (it has no adapter_config.json)",
            EXIT_USER_ERROR,
            extra={"param": "init_adapter"},
        )
    peft_model = PeftModel.from_pretrained(model, path, is_trainable=True)
    if reference:
        peft_model.load_adapter(path, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        peft_model.set_adapter("default")
    return peft_model


def _count_params(model: Any) -> int:
    # A 4-bit parameter stores two values per byte: count what the layer represents, not the packed bytes.
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit" and getattr(p, "quant_state", None) is not None:
            shape = getattr(p.quant_state, "shape", None)
            n = int(shape.numel()) if shape is not None else n * 2
        total += n
    return total

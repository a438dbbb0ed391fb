"""Checkpoints: adapter + optimizer + scheduler + RNG + data position, saved atomically, loaded for resume.

Layout of `checkpoints/checkpoint-N/`: the PEFT adapter files (loadable on their own with
PeftModel.from_pretrained), the tokenizer files, `trainer_state.pt` holding the optimizer, scheduler and data
position, and `rng_state_R.pt` for each process R (every process draws its own random numbers, e.g. dropout
masks, and continues its own stream on a resume).

Saving is three steps so that every process can add its part: the main process `begin`s a staging folder,
each process writes its RNG state (and under FSDP its optimizer shard, `optimizer_R.pt`) into it
(`save_rank_state`), and the main process `save`s the rest and renames the folder into place.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from .errors import EXIT_USER_ERROR, INVALID_CONFIG, TrainerError

STATE_FILE = "trainer_state.pt"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"checkpoint-{step}"


def check_resume_dir(path: str | Path) -> Path:
    """Cheap check (no torch) that `path` is a checkpoint this trainer wrote. Raises TrainerError (exit 2)."""
    p = Path(path)
    if not p.is_dir():
        raise TrainerError(
            INVALID_CONFIG,
            f"resume_from {str(path)!r}: directory not found",
            EXIT_USER_ERROR,
            extra={"param": "resume_from"},
        )
    needed = (STATE_FILE, ADAPTER_WEIGHTS, "adapter_config.json")
    missing = [name for name in needed if not (p / name).is_file()]
    if missing:
        raise TrainerError(
            INVALID_CONFIG,
            f"resume_from {str(path)!r} is not a trainer checkpoint (missing {', '.join(missing)})",
            EXIT_USER_ERROR,
            extra={"param": "resume_from"},
        )
    return p


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def staging(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def begin(path: Path) -> Path:
    """Main process: a fresh staging folder for checkpoint `path` (a leftover half-written one goes)."""
    tmp = staging(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_rank_state(path: Path, rank: int, *, sharded_optimizer: Any = None) -> None:
    """Every process: its RNG state into the staging folder of checkpoint `path`, and under FSDP its shard of
    the optimizer state (each process holds the moments of its shard of the weights)."""
    import torch

    torch.save(_rng_state(), staging(path) / f"rng_state_{rank}.pt")
    if sharded_optimizer is not None:
        torch.save(sharded_optimizer.state_dict(), staging(path) / f"optimizer_{rank}.pt")


def save(
    path: Path,
    *,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    adapter_state: dict[str, Any] | None = None,
) -> Path:
    """Main process, after `begin` and every process's `save_rank_state`: write the rest into the staging
    folder and rename it into place (a half-written checkpoint is never left under its name). Under FSDP,
    `adapter_state` holds the gathered adapter weights and `optimizer` is None (each rank saved its shard)."""
    import torch

    tmp = staging(path)
    model.save_pretrained(tmp, state_dict=adapter_state, selected_adapters=["default"])  # not DPO's reference
    tokenizer.save_pretrained(tmp)
    payload = {**state, "scheduler": scheduler.state_dict()}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    torch.save(payload, tmp / STATE_FILE)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def load(path: Path, *, model: Any, optimizer: Any, scheduler: Any, rank: int = 0) -> dict[str, Any]:
    """Load adapter weights into the already-wrapped model (never wrapping it again) and restore the rest,
    this process's RNG state included."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(path / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise TrainerError(
            INVALID_CONFIG,
            f"checkpoint {path} does not match this model/LoRA config (e.g. unexpected {unexpected[0]!r})",
            EXIT_USER_ERROR,
            extra={"param": "resume_from"},
        )
    state: dict[str, Any] = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    shard = path / f"optimizer_{rank}.pt"
    if shard.is_file():  # FSDP: this rank's shard (the same world size shards the same way)
        optimizer.load_state_dict(torch.load(shard, map_location="cpu", weights_only=False))
        state.pop("optimizer", None)
    else:
        optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    rng_file = path / f"rng_state_{rank}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    elif "rng" in state:  # a checkpoint written before the per-process files
        _set_rng_state(state["rng"])
    state.pop("rng", None)
    return state

"""Which models a key can call, and what each one is: `GET /v1/models` and the `model` of a completion.

- Base models: the model folders under TUNING_MODELS_DIR, and the base of each of the key's fine-tunes.
- Fine-tunes: the key's succeeded jobs whose adapter was not deleted. A fine-tune's id is its job's
  `fine_tuned_model`: OpenAI's form `ft:<model>:<owner>:<suffix>:<job id>` (what `/v1/models` lists), or the
  native job's `ft:<model>:<suffix>:<job id>`; both name the same adapter. Another key's fine-tune is a
  404, exactly like an unknown id.
- `<fine-tune id>:base`: that fine-tune's base exactly as it is served under the fine-tune (a QLoRA one's
  4-bit base), with the adapter off: what "compare with the base" means, with no second copy loaded.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import APIError
from ..openai import compat as oc
from ..settings import Settings
from ..storage.store import Store

SYSTEM_OWNER = "system"
BASE_OF = ":base"  # `<fine-tune id>:base`


@dataclass(frozen=True)
class Target:
    """What the worker loads for a `model`: a base (4-bit or not) and, for a fine-tune, its adapter."""

    id: str
    location: str
    quantize: bool
    adapter_name: str | None = None
    adapter_path: str | None = None

    def worker_spec(self) -> dict[str, Any]:
        adapter = (
            None if self.adapter_name is None else {"name": self.adapter_name, "path": self.adapter_path}
        )
        return {"base": {"location": self.location, "quantize": self.quantize}, "adapter": adapter}


def model_not_found(model: str) -> APIError:
    # The same body for an unknown id and another key's fine-tune: nothing leaks between tenants.
    return APIError(
        404,
        "model_not_found",
        f"The model {model!r} does not exist or you do not have access to it",
        param="model",
    )


class Catalogue:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    # ---- names -------------------------------------------------------------------------------------------

    def local_bases(self) -> dict[str, Path]:
        """Model folders under TUNING_MODELS_DIR (a folder with a config.json), by name."""
        root = self.settings.models_dir
        if not root.is_dir():
            return {}
        return {p.name: p for p in sorted(root.iterdir()) if (p / "config.json").is_file()}

    def base_location(self, name: str) -> str:
        """Where the worker finds a base: its folder under TUNING_MODELS_DIR, else the name as the job
        trained it (a hub id in the local cache, or a directory)."""
        local = self.settings.models_dir / name
        return str(local) if (local / "config.json").is_file() else name

    @staticmethod
    def fine_tune_id(row: dict[str, Any]) -> str:
        name = oc.fine_tuned_model({**row, "status": "succeeded"}, row["owner"])
        assert name is not None
        return name

    def _quantize(self, row: dict[str, Any]) -> bool:
        return row["adapter"] == "qlora" and self.settings.inference_qlora_base == "4bit"

    # ---- lookups -----------------------------------------------------------------------------------------

    async def fine_tune(self, model: str, owner: str, *, deleted_too: bool = False) -> dict[str, Any]:
        """The owner's servable fine-tune named `model` (either of its names), else 404. `deleted_too`: also
        one whose adapter was deleted."""
        if not model.startswith("ft:"):
            raise model_not_found(model)
        job_id = model.rsplit(":", 1)[-1]
        row = await self.store.get_fine_tune(job_id, deleted_too=deleted_too)
        if (
            row is None
            or row["owner"] != owner
            or model not in (self.fine_tune_id(row), row["fine_tuned_model"])
        ):
            raise model_not_found(model)
        return row

    async def resolve(self, model: str, owner: str) -> Target:
        if model.startswith("ft:") and model.endswith(BASE_OF):
            # The base stays callable after the fine-tune's adapter was deleted.
            row = await self.fine_tune(model.removesuffix(BASE_OF), owner, deleted_too=True)
            return Target(model, self.base_location(row["model"]), self._quantize(row))
        if model.startswith("ft:"):
            row = await self.fine_tune(model, owner)
            return Target(
                model,
                self.base_location(row["model"]),
                self._quantize(row),
                adapter_name=row["id"],
                adapter_path=row["adapter_path"],
            )
        if model in self.local_bases():
            return Target(model, self.base_location(model), quantize=False)
        if any(r["model"] == model for r in await self.store.list_fine_tunes(owner=owner)):
            return Target(model, self.base_location(model), quantize=False)
        raise model_not_found(model)

    async def list(self, owner: str) -> list[dict[str, Any]]:
        tunes = await self.store.list_fine_tunes(owner=owner)
        bases = {name: _mtime(path) for name, path in self.local_bases().items()}
        for row in tunes:
            bases.setdefault(row["model"], int(row["finished_at"] or 0))
        out = [self._base_object(name, created) for name, created in sorted(bases.items())]
        out += [self._fine_tune_object(row) for row in tunes]
        return out

    async def get(self, model: str, owner: str) -> dict[str, Any]:
        if model.startswith("ft:"):
            return self._fine_tune_object(await self.fine_tune(model, owner))
        for item in await self.list(owner):
            if item["id"] == model:
                return item
        raise model_not_found(model)

    async def delete(self, model: str, owner: str) -> dict[str, Any]:
        """Delete a fine-tune: its adapter folder goes, the job stays (succeeded) with its records."""
        if not model.startswith("ft:"):
            await self.get(model, owner)  # an unknown base is a 404, a known one is not deletable
            raise APIError(
                403,
                "model_not_deletable",
                f"{model!r} is a base model; only fine-tunes can be deleted",
                param="model",
            )
        row = await self.fine_tune(model, owner)
        if not await self.store.delete_fine_tune(row["id"], owner=owner, now=time.time()):
            raise model_not_found(model)
        adapter = Path(row["adapter_path"])
        if adapter.is_dir() and self.settings.jobs_dir in adapter.parents:
            with contextlib.suppress(OSError):
                shutil.rmtree(adapter)
        return {"id": model, "object": "model", "deleted": True}

    # ---- objects -----------------------------------------------------------------------------------------

    @staticmethod
    def _base_object(name: str, created: int) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": SYSTEM_OWNER,
            "parent": None,
            "job_id": None,
            "method": None,
            "adapter": None,
        }

    def _fine_tune_object(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.fine_tune_id(row),
            "object": "model",
            "created": int(row["finished_at"] or 0),
            "owned_by": row["owner"],
            "parent": row["model"],
            "job_id": row["id"],
            "method": row["method"],
            "adapter": row["adapter"],
        }


def _mtime(path: Path) -> int:
    try:
        return int(path.stat().st_mtime)
    except OSError:
        return 0

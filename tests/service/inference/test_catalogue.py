"""Which model ids a key may call (catalogue.py) over a real store: bases from TUNING_MODELS_DIR and the
key's fine-tunes, fine-tunes by either of their names, 404 for another key's exactly as for an unknown id,
QLoRA fine-tunes on a 4-bit base (or not, by setting), deletion of a fine-tune's adapter."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service.core_fixtures import make_settings, run
from tuning_service.errors import APIError
from tuning_service.inference.catalogue import Catalogue
from tuning_service.storage.store import Store


async def _succeeded(
    store: Store, settings: Any, owner: str, *, method: str = "lora", suffix: str = "s", model: str = "tiny"
) -> dict[str, Any]:
    req = {"model": model, "training_file": "t.jsonl", "method": "sft", "adapter": method, "suffix": suffix}
    row, _ = await store.create_job(
        owner=owner,
        model=model,
        request=req,
        request_hash=json.dumps(req),
        idempotency_key=None,
        hyperparameters={},
        num_gpus=0,
        now=time.time(),
    )
    adapter = settings.jobs_dir / row["id"] / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    name = f"ft:{model}:{suffix}:{row['id']}"
    async with store.transaction() as tx:
        await tx.update(
            row["id"],
            status="succeeded",
            fine_tuned_model=name,
            adapter_path=str(adapter),
            finished_at=time.time(),
        )
    return {**row, "fine_tuned_model": name, "adapter_path": str(adapter)}


async def _catalogue(tmp_path: Path, **settings: Any) -> tuple[Catalogue, Store, Any]:
    s = make_settings(tmp_path, **settings)
    s.ensure_dirs()
    (s.models_dir / "tiny").mkdir(parents=True)
    (s.models_dir / "tiny" / "config.json").write_text("{}")
    (s.models_dir / "not-a-model").mkdir()
    store = Store(s.db_path)
    await store.open()
    return Catalogue(s, store), store, s


def test_bases_and_own_fine_tunes_are_listed_and_resolved(tmp_path: Path) -> None:
    async def body() -> None:
        cat, store, s = await _catalogue(tmp_path)
        mine = await _succeeded(store, s, "key_a")
        qlora = await _succeeded(store, s, "key_a", method="qlora", suffix="q")
        await _succeeded(store, s, "key_b")
        listed = await cat.list("key_a")
        ids = [m["id"] for m in listed]
        openai_name = f"ft:tiny:key_a:s:{mine['id']}"
        assert ids == ["tiny", openai_name, f"ft:tiny:key_a:q:{qlora['id']}"]
        assert listed[1] == {
            "id": openai_name,
            "object": "model",
            "created": listed[1]["created"],
            "owned_by": "key_a",
            "parent": "tiny",
            "job_id": mine["id"],
            "method": "sft",
            "adapter": "lora",
        }
        # Either name of a fine-tune resolves to its adapter on the base folder.
        for name in (openai_name, mine["fine_tuned_model"]):
            target = await cat.resolve(name, "key_a")
            assert target.worker_spec() == {
                "base": {"location": str(s.models_dir / "tiny"), "quantize": False},
                "adapter": {"name": mine["id"], "path": mine["adapter_path"]},
            }
        assert (await cat.resolve(qlora["fine_tuned_model"], "key_a")).quantize is True
        assert (await cat.resolve("tiny", "key_b")).adapter_name is None
        await store.close()

    run(body())


@pytest.mark.parametrize(
    "name",
    [
        "ft:tiny:key_a:s:{id}",
        "ft:tiny:s:ftjob-000000000000000000000000",
        "ft:other:key_a:s:{id}",
        "not-a-model",
        "nope",
        "ft:",
        "../tiny",
    ],
)
def test_unknown_names_and_another_keys_fine_tune_are_the_same_404(tmp_path: Path, name: str) -> None:
    async def body() -> None:
        cat, store, s = await _catalogue(tmp_path)
        theirs = await _succeeded(store, s, "key_a")
        model = name.format(id=theirs["id"])
        asker = "key_b" if model.startswith("ft:tiny:key_a:s:") else "key_a"
        for call in (cat.resolve, cat.get, cat.delete):
            with pytest.raises(APIError) as err:
                await call(model, asker)
            assert (err.value.status_code, err.value.code, err.value.param) == (
                404,
                "model_not_found",
                "model",
            )
            assert model in err.value.message
        await store.close()

    run(body())


def test_a_qlora_fine_tune_may_be_served_on_the_full_base(tmp_path: Path) -> None:
    async def body() -> None:
        cat, store, s = await _catalogue(tmp_path, inference_qlora_base="full")
        q = await _succeeded(store, s, "key_a", method="qlora")
        assert (await cat.resolve(q["fine_tuned_model"], "key_a")).quantize is False
        await store.close()

    run(body())


def test_deleting_a_fine_tune_removes_its_adapter_and_keeps_the_job(tmp_path: Path) -> None:
    async def body() -> None:
        cat, store, s = await _catalogue(tmp_path)
        mine = await _succeeded(store, s, "key_a")
        with pytest.raises(APIError) as err:
            await cat.delete("tiny", "key_a")
        assert (err.value.status_code, err.value.code) == (403, "model_not_deletable")
        assert await cat.delete(mine["fine_tuned_model"], "key_a") == {
            "id": mine["fine_tuned_model"],
            "object": "model",
            "deleted": True,
        }
        assert not Path(mine["adapter_path"]).exists()
        assert [m["id"] for m in await cat.list("key_a")] == ["tiny"]
        assert (await store.get_job(mine["id"]))["status"] == "succeeded"  # type: ignore[index]
        with pytest.raises(APIError):
            await cat.delete(mine["fine_tuned_model"], "key_a")
        await store.close()

    run(body())


def test_the_base_of_a_fine_tune_trained_from_elsewhere_is_callable(tmp_path: Path) -> None:
    async def body() -> None:
        cat, store, s = await _catalogue(tmp_path)
        await _succeeded(store, s, "key_a", model="org/hub-model")
        assert "org/hub-model" in [m["id"] for m in await cat.list("key_a")]
        assert (await cat.resolve("org/hub-model", "key_a")).location == "org/hub-model"
        with pytest.raises(APIError):
            await cat.resolve("org/hub-model", "key_b")  # not a base this key has used
        await store.close()

    run(body())


def test_a_fine_tunes_base_as_served_under_it(tmp_path: Path) -> None:
    async def body() -> None:
        cat, store, s = await _catalogue(tmp_path)
        q = await _succeeded(store, s, "key_a", method="qlora", suffix="q")
        base = await cat.resolve(q["fine_tuned_model"] + ":base", "key_a")
        assert base.worker_spec() == {"base": {"location": str(s.models_dir / "tiny"), "quantize": True},
                                      "adapter": None}  # fmt: skip
        with pytest.raises(APIError) as err:
            await cat.resolve(q["fine_tuned_model"] + ":base", "key_b")
        assert err.value.code == "model_not_found"
        # Its base stays callable once the adapter is deleted.
        await cat.delete(q["fine_tuned_model"], "key_a")
        assert (await cat.resolve(q["fine_tuned_model"] + ":base", "key_a")).quantize is True
        await store.close()

    run(body())

"""The bases of every API model: request bodies (where null means "the default"), response objects (exactly
the fields the service sends, checked by the contract tests), query strings and list pages."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from tuning_trainer.schema import StrictModel


class RequestBody(StrictModel):
    """A JSON request body. An optional field sent as null takes its default, as if it were absent (the
    document shows such fields as `anyOf: [..., null]`)."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: Any) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        required = set(schema.get("required", ()))
        for name, prop in list(schema.get("properties", {}).items()):
            if name in required or _nullable(prop):
                continue
            outer = {k: prop.pop(k) for k in ("default", "description", "examples") if k in prop}
            schema["properties"][name] = {"anyOf": [prop, {"type": "null"}], **outer}
        return schema


def _nullable(prop: dict[str, Any]) -> bool:
    return any(branch.get("type") == "null" for branch in prop.get("anyOf", ()))


class ResponseModel(StrictModel):
    """An object the service sends. Never used to build responses (reads stay free of validation: the
    routes write plain dicts); it documents them, and the contract tests validate real responses with it."""


class QueryModel(BaseModel):
    """A query string: values arrive as text ("20", "true"), unknown names are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Page(ResponseModel):
    """A page of a list, newest first; `after=<last_id>` fetches the next one."""

    object: Literal["list"]
    has_more: bool
    first_id: str | None
    last_id: str | None

    @staticmethod
    def body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
        """The page around `data` as the routes send it (a plain dict, like every response body)."""
        return {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

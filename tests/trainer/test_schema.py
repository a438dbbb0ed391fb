"""The schema building blocks (tuning_trainer/schema.py): JSON semantics, schemas without pydantic's own
keywords, and one problem per validation error whose message is written from the field's JSON Schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import Field, ValidationError, model_validator

from tuning_trainer.config import Hyperparameters, parse_hyperparameters
from tuning_trainer.schema import (
    INTEGRAL,
    MISSING,
    TYPE,
    UNKNOWN_FIELD,
    VALUE,
    StrictModel,
    cross_field,
    describe,
    first_problem,
    json_schema,
)


class Inner(StrictModel):
    n: Annotated[int, Field(ge=1, le=10), INTEGRAL] | Literal["auto"] = "auto"
    names: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=3)] = ["x"]


class Outer(StrictModel):
    name: Annotated[str, Field(max_length=5, description="A short name")]
    rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    tags: Annotated[dict[Annotated[str, Field(max_length=3)], str], Field(max_length=2)] = {}
    inner: Inner | None = None
    a: int | None = None
    b: int | None = None

    @model_validator(mode="after")
    def _not_both(self) -> Outer:
        if self.a is not None and self.b is not None:
            raise cross_field("b", "give {parent}.a or {parent}.b, not both")
        return self


SCHEMA = json_schema(Outer)
FIELDS = "name, rate, tags, inner, a, b"
N = 'an integer in [1, 10] or "auto"'
NAME = "a non-empty string"


def problem(data: Any) -> Any:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return first_problem(info.value, SCHEMA)


@pytest.mark.parametrize(
    ("data", "kind", "param", "message"),
    [
        ({}, MISSING, "name", "name is required: A short name"),
        ({"name": 5}, TYPE, "name", "name must be a string of at most 5 characters, got an integer"),
        ({"name": "toolong"}, VALUE, "name", "name must be a string of at most 5 characters, got 'toolong'"),
        ({"name": "a", "rate": 0}, VALUE, "rate", "rate must be a number in (0.0, 1.0], got 0"),
        ({"name": "a", "rate": True}, TYPE, "rate", "rate must be a number in (0.0, 1.0], got a boolean"),
        ({"name": "a", "rate": "0.5"}, TYPE, "rate", "rate must be a number in (0.0, 1.0], got a string"),
        ({"name": "a", "zz": 1}, UNKNOWN_FIELD, "zz", f"Unknown field 'zz'; allowed: {FIELDS}"),
        # Through a nullable object (anyOf [object, null]) and a union (integer or "auto").
        ({"name": "a", "inner": {"n": 0}}, VALUE, "inner.n", f"inner.n must be {N}, got 0"),
        ({"name": "a", "inner": {"n": "x"}}, VALUE, "inner.n", f"inner.n must be {N}, got 'x'"),
        ({"name": "a", "inner": {"n": 2.5}}, TYPE, "inner.n", f"inner.n must be {N}, got a number"),
        ({"name": "a", "inner": {"q": 1}}, UNKNOWN_FIELD, "inner.q",
         "Unknown field 'inner.q'; allowed in inner: n, names"),
        ({"name": "a", "inner": {"names": []}}, VALUE, "inner.names",
         f"inner.names must be a list of 1 to 3 items (each {NAME}), got a list of 0 items"),
        ({"name": "a", "inner": {"names": ["ok", ""]}}, VALUE, "inner.names.1",
         f"inner.names.1 must be {NAME}, got ''"),
        # A dict's values are fields of it; its keys are its own.
        ({"name": "a", "tags": {"k": 1}}, TYPE, "tags.k", "tags.k must be a string, got an integer"),
        ({"name": "a", "tags": {"long": "v"}}, VALUE, "tags",
         "tags keys must be strings of at most 3 characters, got 'long'"),
        ({"name": "a", "tags": {"a": "", "b": "", "c": ""}}, VALUE, "tags",
         "tags must be an object of at most 2 keys (keys: a string of at most 3 characters; values: a "
         "string), got an object of 3 keys"),
        ({"name": "a", "a": 1, "b": 2}, VALUE, "b", "give body.a or body.b, not both"),
        ([1, 2], TYPE, None, "the request body must be an object, got a list"),
    ],
)  # fmt: skip
def test_each_problem_names_the_field_and_its_limit(
    data: Any, kind: str, param: str | None, message: str
) -> None:
    got = problem(data)
    assert (got.kind, got.param, got.message) == (kind, param, message)


def test_integral_floats_are_integers_and_json_types_are_strict() -> None:
    assert Inner.model_validate({"n": 3.0}).n == 3
    for bad in ("3", True, 3.5):
        with pytest.raises(ValidationError):
            Inner.model_validate({"n": bad})
    with pytest.raises(ValidationError):
        Outer.model_validate({"name": "a", "rate": float("nan")})


def test_limits_are_json_schema_keywords_not_pydantics() -> None:
    # INTEGRAL after the constraint: the limits stay minimum/maximum (before it, pydantic emits "ge"/"le").
    n = SCHEMA["$defs"]["Inner"]["properties"]["n"]["anyOf"][0]
    assert n == {"type": "integer", "minimum": 1, "maximum": 10}
    assert "title" not in SCHEMA["properties"]["name"]  # no generated titles


def test_a_value_that_must_not_be_echoed_has_a_quiet_message() -> None:
    got = problem({"name": "toolong"})
    assert got.quiet == "name must be a string of at most 5 characters" and "toolong" not in got.quiet


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        ({"type": "integer", "minimum": 1}, "an integer >= 1"),
        ({"type": "number", "exclusiveMaximum": 1}, "a number < 1.0"),
        ({"type": "boolean"}, "true or false"),
        ({"enum": ["a", "b"]}, "one of a, b"),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "an integer"),
        ({"type": "string", "pattern": "^x$"}, "a string matching ^x$"),
        ({"type": "string", "x-rule": "a model name"}, "a model name"),
    ],
)
def test_describe(schema: dict[str, Any], text: str) -> None:
    assert describe(schema) == text


def test_the_trainers_hyperparameters_report_through_the_same_problems() -> None:
    from tuning_trainer.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_hyperparameters({"learning_rate": 2})
    assert info.value.param == "hyperparameters.learning_rate"
    assert info.value.message == "hyperparameters.learning_rate must be a number in (0.0, 1.0], got 2"
    with pytest.raises(ConfigError) as info:
        parse_hyperparameters({"nope": 1})
    assert info.value.code == "unknown_field" and info.value.param == "hyperparameters.nope"
    assert parse_hyperparameters({}) == Hyperparameters()

"""Pydantic building blocks shared by the trainer's job schema (config.py) and the service's API schema.

- `StrictModel`: JSON semantics, not Python's: "42" is not an integer, true is not a number, NaN is refused,
  unknown fields are refused, instances are frozen. An integral float (7.0) is the integer 7, as JSON Schema
  says, wherever `Int` is used.
- `json_schema`: a model's JSON Schema with the constraints as JSON Schema keywords and no generated titles,
  which is what `/openapi.json` publishes.
- `first_problem`: a ValidationError as one `Problem`: the dotted field, a message that names the field and
  its limit, and the kind of problem (`missing`, `type`, `unknown_field`, `value`). The message is written
  from the field's JSON Schema, so what a client is told and what the document says cannot differ.

No torch or transformers here: the service process imports this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError

# Kinds of problem: `missing` (a required field is absent or null), `type` (the wrong JSON type),
# `unknown_field` (a name the schema does not have), `value` (the right type, outside the field's limits).
MISSING, TYPE, UNKNOWN_FIELD, VALUE = "missing", "type", "unknown_field", "value"


def _integral(value: Any) -> Any:
    # 7.0 is the integer 7 in JSON (and in JSON Schema); 7.5 stays a float and is refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Put after a constraint: `Annotated[int, Field(ge=1, le=1000), INTEGRAL]`. (Before it, pydantic would apply
# the limits as validator functions and publish them as its own `ge`/`le` keywords instead of JSON Schema's
# `minimum`/`maximum`; a test checks that no schema carries those.)
INTEGRAL = BeforeValidator(_integral)


def cross_field(field: str, message: str) -> PydanticCustomError:
    """A rule between fields of one object, raised by its model validator: reported on `field` (a name in
    that object). `message` may name `{parent}`, the dotted path of that object in the request."""
    return PydanticCustomError("cross_field", "a rule between fields", {"field": field, "message": message})


class StrictModel(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class _Generator(GenerateJsonSchema):
    """No generated titles (every property would otherwise carry its own name back as "Title Case"), and
    descriptions on one line (attribute docstrings keep their line breaks and indentation)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: Any = "validation") -> Any:
        return _one_line(super().generate(schema, mode))

    def generate_definitions(self, inputs: Any) -> Any:
        keys, defs = super().generate_definitions(inputs)
        return _one_line(keys), _one_line(defs)

    def model_schema(self, schema: Any) -> Any:
        out = super().model_schema(schema)
        cls = schema.get("cls")
        if isinstance(out, dict) and cls is not None and "title" in out and not cls.model_config.get("title"):
            out.pop("title")
        return out


def _one_line(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: " ".join(v.split()) if k == "description" and isinstance(v, str) else _one_line(v)
                for k, v in node.items()}  # fmt: skip
    if isinstance(node, list):
        return [_one_line(v) for v in node]
    return node


SCHEMA_GENERATOR = _Generator


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(schema_generator=SCHEMA_GENERATOR)


# ---- validation errors as problems -----------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    kind: str
    param: str | None
    message: str
    # The message without the value that was sent (", got ..."), for fields whose value must not be echoed.
    quiet: str | None = None


_VALUE_ERRORS = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "multiple_of",
        "finite_number",
        "too_short",
        "too_long",
        "string_too_short",
        "string_too_long",
        "string_pattern_mismatch",
        "enum",
        "value_error",
        "cross_field",
    }
)


def first_problem(
    exc: ValidationError, schema: Mapping[str, Any], *, prefix: str = "", noun: str = "field"
) -> Problem:
    """The first field with a problem (pydantic reports fields in order), described from `schema`, the JSON
    Schema of the model that raised `exc` (`json_schema(model)`). `prefix` is prepended to the param
    (e.g. "hyperparameters" when the hyperparameters were validated alone); `noun` names what the fields
    are ("query parameter")."""
    errors = exc.errors(include_url=False)
    resolver = _Resolver(schema)
    located = [(resolver.locate(err["loc"], err["type"]), err) for err in errors]
    # A union reports one error per branch: the branch that got furthest (deeper into the value, or past the
    # type check to a limit) says what is wrong. Only errors of the first field reported are considered.
    (path, node, parent), best = located[0]
    for (p, n, par), err in located[1:]:
        if p[: len(located[0][0][0])] != located[0][0][0]:
            continue
        deeper = len(p) > len(path)
        sharper = p == path and err["type"] in _VALUE_ERRORS and best["type"] not in _VALUE_ERRORS
        if deeper or sharper:
            (path, node, parent), best = (p, n, par), err
    group = [best, *(err for (p, _, _), err in located if p == path and err is not best)]
    param = ".".join([prefix, *path] if prefix else path) or None
    first = group[0]
    kind = _kind(group, node, resolver)
    if first["type"] == "cross_field":
        # A rule between fields of one object (the error's location): reported on the field it names.
        ctx = first.get("ctx") or {}
        where = ".".join(p for p in (param,) if p)
        field = ".".join(p for p in (where, str(ctx.get("field") or "")) if p) or None
        return Problem(VALUE, field, str(ctx.get("message") or first["msg"]).format(parent=where or "body"))
    if kind == MISSING:
        about = resolver.resolve(node).get("description") if node is not None else None
        return Problem(MISSING, param, f"{param} is required" + (f": {_sentence(about)}" if about else ""))
    if kind == UNKNOWN_FIELD:
        allowed = ", ".join(resolver.member(parent, "properties") or {}) if parent is not None else ""
        where = f" in {'.'.join([prefix, *path[:-1]] if prefix else path[:-1])}" if len(path) > 1 else ""
        hint = f"; allowed{where}: {allowed}" if allowed else "; none are accepted here"
        return Problem(UNKNOWN_FIELD, param, f"Unknown {noun} {param!r}{hint}")
    value = first.get("input")
    if isinstance(node, Mapping) and "x-key" in node:
        expected = describe(node["x-key"], resolver)
        return Problem(kind, param, f"{param} keys must be {_plural(expected)}, got {_short(value)}")
    expected = describe(node, resolver) if node is not None else "valid"
    got = _type_name(value) if kind == TYPE else _short(value)
    said = f"{param or 'the request body'} must be {expected}"
    return Problem(kind, param, f"{said}, got {got}", quiet=said)


def _kind(group: list[Any], node: Any, resolver: _Resolver) -> str:
    types = {err["type"] for err in group}
    if "missing" in types:
        return MISSING
    if "extra_forbidden" in types:
        return UNKNOWN_FIELD
    if types & _VALUE_ERRORS:
        return VALUE
    if "literal_error" in types:
        # A string outside an enum of strings is a value problem; a number sent for it is a type problem.
        value = group[0].get("input")
        consts = _consts(resolver.resolve(node), resolver) if node is not None else []
        if any(type(c) is type(value) for c in consts):
            return VALUE
    return TYPE


def _consts(node: Mapping[str, Any], resolver: _Resolver) -> list[Any]:
    if "const" in node:
        return [node["const"]]
    if "enum" in node:
        return list(node["enum"])
    out: list[Any] = []
    for branch in node.get("anyOf", ()):
        out += _consts(resolver.resolve(branch), resolver)
    return out


class _Resolver:
    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.root = schema
        self.defs: Mapping[str, Any] = schema.get("$defs", {})

    def resolve(self, node: Any) -> Mapping[str, Any]:
        while isinstance(node, Mapping) and "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            node = self.defs.get(name) or self.root.get("components", {}).get("schemas", {}).get(name, {})
        return node if isinstance(node, Mapping) else {}

    def locate(self, loc: tuple[Any, ...], error_type: str = "") -> tuple[list[str], Any, Any]:
        """(the field path in `loc`, without pydantic's union-branch tags; the field's schema (a union's
        whole anyOf, not the branch); the schema of the object that holds it). A problem with a dict's key
        is the dict's: its field schema is then `{"x-key": <the keys' schema>}`."""
        node: Any = self.root  # where the walk is (inside a union branch, the branch)
        field: Any = self.root  # the schema of the last field named in `loc`
        parent: Any = None
        path: list[str] = []
        for i, part in enumerate(loc):
            if error_type == "extra_forbidden" and i == len(loc) - 1:
                parent, field = node, None  # a name the object does not have
                path.append(str(part))
                break
            if part == "[key]":
                path.pop()
                node, field = parent, {"x-key": self.member(parent, "propertyNames") or {}}
                continue
            step = self._step(node, part)
            if step is None:
                current = self.resolve(node)
                if isinstance(part, str) and "anyOf" in current:
                    node = _branch(current, part, self) or node
                tags = (current.get("discriminator") or {}).get("mapping") or {}
                if isinstance(part, str) and part in tags:  # a tagged union's branch, by its tag
                    node = {"$ref": tags[part]}
                continue  # else a tag of pydantic's own (a validator wrapper): still the same field
            parent, node = node, step
            path.append(str(part))
            field = node
        return path, field, parent

    def member(self, node: Any, key: str) -> Any:
        """`node[key]`, looking into a union's branches (a nullable object is `anyOf: [object, null]`)."""
        current = self.resolve(node)
        if key in current:
            return current[key]
        for branch in current.get("anyOf", ()):
            found = self.member(branch, key)
            if found is not None:
                return found
        return None

    def _step(self, node: Any, part: Any) -> Any:
        """The schema of member `part` of `node` (an object's property or value, an array's item), looking
        into the branches of a union (a nullable object is `anyOf: [object, null]`); None if it has none."""
        current = self.resolve(node)
        props = current.get("properties")
        if isinstance(part, str) and isinstance(props, Mapping) and part in props:
            return props[part]
        if isinstance(part, str) and isinstance(current.get("additionalProperties"), Mapping):
            return current["additionalProperties"]
        if isinstance(part, int) and isinstance(current.get("items"), Mapping):
            return current["items"]
        for branch in current.get("anyOf", ()):
            if self.resolve(branch).get("type") in ("object", "array") or "$ref" in branch:
                found = self._step(branch, part)
                if found is not None:
                    return found
        return None


def _branch(node: Mapping[str, Any], tag: str, resolver: _Resolver) -> Any:
    """The anyOf branch a pydantic union tag ("constrained-int", "literal['auto']", "list[str]"...) names."""
    wanted = (
        "const"
        if tag.startswith("literal[")
        else "array"
        if tag.startswith("list[")
        else "object"
        if tag.startswith("dict[")
        else "integer"
        if tag.endswith("int]") or tag.endswith("int")
        else "number"
        if tag.endswith("float")
        else "string"
        if tag.endswith("str")
        else "boolean"
        if tag.endswith("bool")
        else None
    )
    for branch in node["anyOf"]:
        b = resolver.resolve(branch)
        if wanted == "const" and ("const" in b or "enum" in b):
            return branch
        if wanted is not None and b.get("type") == wanted:
            return branch
        if wanted is None and str(branch.get("$ref", "")).endswith("/" + tag):
            return branch
    return None


# ---- describing a field ----------------------------------------------------------------------------------


def describe(node: Any, resolver: _Resolver | None = None) -> str:
    """What a field accepts, in words, from its JSON Schema ("an integer in [1, 1000] or "auto"")."""
    resolver = resolver or _Resolver({})
    n = resolver.resolve(node)
    if "x-rule" in n:
        return str(n["x-rule"])
    if "discriminator" in n:  # a tagged union: objects told apart by one property
        tag = n["discriminator"].get("propertyName", "type")
        names = ", ".join(json.dumps(v) for v in n["discriminator"].get("mapping", {}))
        return f"an object whose {tag} is one of {names}"
    if "anyOf" in n:
        parts = [describe(b, resolver) for b in n["anyOf"] if resolver.resolve(b).get("type") != "null"]
        return " or ".join(dict.fromkeys(parts))
    if "const" in n:
        return json.dumps(n["const"])
    if "enum" in n:
        return "one of " + ", ".join(str(v) for v in n["enum"])
    kind = n.get("type")
    if kind is None and {"minLength", "maxLength", "pattern"} & n.keys():
        kind = "string"  # an object's propertyNames: strings by definition
    if kind in ("integer", "number"):
        return ("an integer" if kind == "integer" else "a number") + _range(n, kind == "integer")
    if kind == "boolean":
        return "true or false"
    if kind == "string":
        out = _sized("a string", n, "minLength", "maxLength", "characters")
        if "pattern" in n:
            out += f" matching {n['pattern']}"
        return out
    if kind == "array":
        items = n.get("items")
        each = f" (each {describe(items, resolver)})" if items else ""
        return _sized("a list", n, "minItems", "maxItems", "items") + each
    if kind == "object":
        out = "an object" + _length(n, "minProperties", "maxProperties", "keys")
        inner = []
        if isinstance(n.get("propertyNames"), Mapping):
            inner.append(f"keys: {describe({'type': 'string', **n['propertyNames']}, resolver)}")
        if isinstance(n.get("additionalProperties"), Mapping):
            inner.append(f"values: {describe(n['additionalProperties'], resolver)}")
        return out + (f" ({'; '.join(inner)})" if inner else "")
    return "valid"


def _plural(text: str) -> str:
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
        if text.startswith(one):
            return many + text[len(one) :]
    return text


def _fmt(value: Any, integer: bool) -> str:
    return str(int(value)) if integer else repr(float(value))


def _range(n: Mapping[str, Any], integer: bool) -> str:
    lo, hi = n.get("minimum", n.get("exclusiveMinimum")), n.get("maximum", n.get("exclusiveMaximum"))
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None:
        left = "(" if "exclusiveMinimum" in n else "["
        right = ")" if "exclusiveMaximum" in n else "]"
        return f" in {left}{_fmt(lo, integer)}, {_fmt(hi, integer)}{right}"
    if lo is not None:
        return f" {'>' if 'exclusiveMinimum' in n else '>='} {_fmt(lo, integer)}"
    return f" {'<' if 'exclusiveMaximum' in n else '<='} {_fmt(hi, integer)}"


def _sized(what: str, n: Mapping[str, Any], low: str, high: str, unit: str) -> str:
    if n.get(low) == 1 and n.get(high) is None:
        return what.replace("a ", "a non-empty ", 1)
    return what + _length(n, low, high, unit)


def _length(n: Mapping[str, Any], low: str, high: str, unit: str) -> str:
    lo, hi = n.get(low), n.get(high)
    if lo is not None and hi is not None:
        return f" of {lo} to {hi} {unit}"
    if hi is not None:
        return f" of at most {hi} {unit}"
    if lo:
        return f" of at least {lo} {unit}"
    return ""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple, Mapping)):
        n = len(value)
        return f"{_type_name(value)} of {n} {'keys' if isinstance(value, Mapping) else 'items'}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _sentence(text: str) -> str:
    return text.strip().rstrip(".")


# ---- documentation ---------------------------------------------------------------------------------------


def markdown_table(model: type[BaseModel]) -> str:
    """A model's fields as a Markdown table (name, default, what is accepted, meaning), written from its JSON
    Schema: the docs' tables are this text (a test compares them), never a second copy."""
    schema = json_schema(model)
    resolver = _Resolver(schema)
    required = set(schema.get("required", ()))
    rows = ["| name | default | accepted | meaning |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        branches = [resolver.resolve(b) for b in prop.get("anyOf", [prop])]
        inner = (b["description"] for b in branches if "description" in b)
        about = prop.get("description") or next(inner, "")
        if name in required:
            default = "required"
        elif any("properties" in b for b in branches):
            default = "its fields' defaults"  # a nested object (its own table)
        else:
            default = f"`{json.dumps(prop.get('default'))}`"
        meaning = " ".join(str(about).split()).replace("|", "\\|")
        accepted = describe(prop, resolver).replace("|", "\\|")
        if name in required and any(b.get("type") == "null" for b in branches):
            accepted += " or null"
        rows.append(f"| `{name}` | {default} | {accepted} | {meaning} |")
    return "\n".join(rows) + "\n"

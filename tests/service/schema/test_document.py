"""The served /openapi.json and the server agree, because both come from the same models (schema/):

- every numeric limit the document gives for a create body (native and OpenAI) or a query parameter is the
  one the server enforces, in both directions: at the limit the request is accepted, one step past it is
  refused naming the field and the limit;
- the document has no pydantic-only keywords, no engine-dependent regex classes, and every $ref resolves;
- adding a hyperparameter is one edit: a new field of `tuning_trainer.config.Hyperparameters` shows up in
  the document, in validation (with its limit) and on both create routes, with nothing else touched (the
  SDK's contract test and the dashboard's form test read the same document).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.server import ServiceProcess
from tuning_service.schema.jobs import MAX_GPUS_PER_JOB

Field = tuple[str, dict[str, Any]]  # (dotted name, the numeric schema branch)


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def numeric_fields(doc: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[Field]:
    """Every integer/number property (a union's numeric branch) of an object, nested objects included."""
    for name, prop in _resolve(doc, schema).get("properties", {}).items():
        branches = [_resolve(doc, b) for b in prop.get("anyOf", [prop])]
        for b in branches:
            if b.get("type") in ("integer", "number"):
                yield f"{prefix}{name}", b
            elif b.get("type") == "object" and "properties" in b:
                yield from numeric_fields(doc, b, f"{prefix}{name}.")


def _body(field: str, value: Any, base: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(json.dumps(base))
    *parents, leaf = field.split(".")
    node = body
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return body


def _limits(b: dict[str, Any]) -> list[tuple[Any, Any, str]]:
    """(a value at the limit, one just past it, the limit as the message writes it) for each bound."""
    integer = b["type"] == "integer"
    step = 1 if integer else None
    out = []

    def shown(v: Any) -> str:
        return str(int(v)) if integer else repr(float(v))

    if "maximum" in b:
        out.append(
            (b["maximum"], b["maximum"] + step if integer else b["maximum"] * 1.5 + 1, shown(b["maximum"]))
        )
    if "exclusiveMaximum" in b:
        m = b["exclusiveMaximum"]
        out.append((m - 1 if integer else m * 0.999, m, shown(m)))
    if "minimum" in b:
        m = b["minimum"]
        out.append((m, m - step if integer else m - 0.5 - abs(m), shown(m)))
    if "exclusiveMinimum" in b:
        m = b["exclusiveMinimum"]
        out.append((m + 1 if integer else m + 1e-9, m, shown(m)))
    return out


@pytest.fixture(scope="module")
def service(light_service_env: Any) -> Iterator[ServiceProcess]:
    """A real service that queues jobs without running them, without a rate limit (hundreds of requests),
    and leases as many GPUs as a job may ask for (num_gpus at its limit is then a valid job here)."""
    gpus = ",".join(str(i) for i in range(MAX_GPUS_PER_JOB))
    svc = light_service_env.start(
        "limits",
        extra_env={"TUNING_MAX_CONCURRENT_JOBS": "0", "TUNING_RATE_LIMIT_RPS": "0", "TUNING_GPUS": gpus},
    )
    yield svc
    svc.shutdown()


@pytest.fixture(scope="module")
def doc(service: ServiceProcess) -> dict[str, Any]:
    return service.get("/openapi.json", key=None).json()


CREATES = [
    ("/v1/tunings.create", "CreateTuningRequest", 422),
    ("/v1/fine_tuning/jobs", "OpenAICreateJob", 400),
]


@pytest.mark.parametrize(("path", "component", "refused"), CREATES)
def test_every_documented_numeric_limit_is_the_one_enforced(
    service: ServiceProcess, doc: dict[str, Any], path: str, component: str, refused: int
) -> None:
    base = {"model": "tiny-llama", "training_file": "data/train.jsonl"}
    fields = list(numeric_fields(doc, doc["components"]["schemas"][component]))
    names = {name for name, _ in fields}
    assert {
        "seed",
        "hyperparameters.learning_rate",
        "hyperparameters.lora_r",
        "hyperparameters.max_grad_norm",
    } <= (names | {n.replace("n_epochs", "epochs") for n in names})
    checked = 0
    for name, branch in fields:
        # A preference method's settings come with a preference file (sft data is refused for them).
        data = {**base, "training_file": "data/pairs.jsonl"} if name.startswith("method.dpo") else base
        for inside, outside, limit in _limits(branch):
            ok = service.post(path, _body(name, inside, data))
            assert ok.status == 200, (name, inside, ok.text)
            r = service.post(path, _body(name, outside, data))
            assert r.status == refused, (name, outside, r.text)
            assert r.error["param"] == name, (name, r.error)
            assert name in r.error["message"] and limit in r.error["message"], (
                name,
                limit,
                r.error["message"],
            )
            checked += 1
    assert checked >= 2 * len(fields) - 4  # a few fields have one bound only


def test_every_documented_query_limit_is_the_one_enforced(
    service: ServiceProcess, doc: dict[str, Any]
) -> None:
    job = service.create_job()
    checked = 0
    for path, ops in doc["paths"].items():
        op = ops.get("get")
        if op is None or "{file_id}" in path:
            continue
        url = path.replace("{job_id}", job["id"])
        for param in op.get("parameters", []):
            schema = param["schema"]
            if param["in"] != "query" or schema.get("type") != "integer":
                continue
            for inside, outside, limit in _limits(schema):
                if param["name"] == "checkpoint":  # a step that is not there is a 404, not a refusal
                    continue
                ok = service.get(f"{url}?{param['name']}={inside}")
                assert ok.status == 200, (path, param["name"], inside, ok.text)
                r = service.get(f"{url}?{param['name']}={outside}")
                assert r.status == 400 and r.error["param"] == param["name"], (path, r.text)
                assert limit in r.error["message"]
                checked += 1
    assert checked >= 10


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_the_document_speaks_json_schema_only(doc: dict[str, Any]) -> None:
    keys = {k for k, _ in _walk(doc["components"])}
    # pydantic's own spellings of a limit would mean a limit the document's readers cannot see.
    assert not keys & {"ge", "le", "gt", "lt", "max_length", "min_length"}
    for key, value in _walk(doc):
        if key == "description":  # one line each (attribute docstrings keep their line breaks otherwise)
            assert "\n" not in value and "  " not in value, value
        if key == "pattern":
            assert "\\s" not in value and "(?=" not in value and "(?!" not in value, value
        if key == "$ref":
            name = value.rsplit("/", 1)[-1]
            assert value.startswith("#/components/schemas/") and name in doc["components"]["schemas"], value


def test_each_route_lists_the_error_codes_it_answers_with(doc: dict[str, Any]) -> None:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if status == "200":
                    continue
                schema = response["content"]["application/json"]["schema"]
                codes = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
                assert codes and all(isinstance(c, str) for c in codes), (path, method, status)
                assert ", ".join(codes) in response["description"]


# The one edit: a new optional hyperparameter, with its limit, default and description, in
# tuning_trainer/config.py (a copy of the trainer package, first on the path of the service below).
NEW_FIELD = '''
    new_knob: Annotated[int, Field(ge=1, le=9), INTEGRAL] = 3
    """Added by this test"""
'''

ONE_EDIT = r"""
import json
from starlette.testclient import TestClient
import tuning_trainer.config
from tuning_service.app import create_app

assert "new_knob" in tuning_trainer.config.Hyperparameters.model_fields, tuning_trainer.config.__file__
H = {"Authorization": "Bearer test-key-001"}
out = {}
with TestClient(create_app()) as client:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    out["documented"] = schemas["Hyperparameters"]["properties"]["new_knob"]
    out["openai_documented"] = "new_knob" in schemas["OpenAIHyperparameters"]["properties"]
    body = {"model": "tiny-llama", "training_file": "data/train.jsonl"}

    def create(path, knob=None):
        hp = {} if knob is None else {"hyperparameters": {"new_knob": knob}}
        return client.post(path, json={**body, **hp}, headers=H)

    out["accepted"] = create("/v1/tunings.create", 9).json()["hyperparameters"]["new_knob"]
    out["default"] = create("/v1/tunings.create").json()["hyperparameters"]["new_knob"]
    bad = create("/v1/tunings.create", 10)
    out["refused"] = [bad.status_code, bad.json()["error"]]
    bad = create("/v1/fine_tuning/jobs", 10)
    out["openai_refused"] = [bad.status_code, bad.json()["error"]["param"]]
print(json.dumps(out))
"""


def test_adding_a_hyperparameter_is_one_edit(tmp_path: Any, light_service_env: Any, repo_root: Any) -> None:
    trainer = shutil.copytree(
        repo_root / "trainer" / "tuning_trainer",
        tmp_path / "edited" / "tuning_trainer",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    source = (trainer / "config.py").read_text(encoding="utf-8")
    assert "\n\nclass JobConfig(" in source
    (trainer / "config.py").write_text(
        source.replace("\n\nclass JobConfig(", NEW_FIELD + "\n\nclass JobConfig(", 1)
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "edited"), os.environ.get("PYTHONPATH", "")]),
        "TUNING_DATA_DIR": str(tmp_path / "data"),
        "TUNING_FILES_ROOT": str(light_service_env.files_root),
        "TUNING_MODELS_DIR": str(light_service_env.models_dir),
        "TUNING_MAX_CONCURRENT_JOBS": "0",
        "TUNING_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [sys.executable, "-c", ONE_EDIT], env=env, cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["documented"] == {
        "default": 3,
        "description": "Added by this test",
        "maximum": 9,
        "minimum": 1,
        "type": "integer",
    }
    assert out["openai_documented"] and out["accepted"] == 9 and out["default"] == 3
    status, error = out["refused"]
    assert status == 422 and error["code"] == "invalid_hyperparameter"
    assert error["param"] == "hyperparameters.new_knob" and "[1, 9]" in error["message"]
    assert out["openai_refused"] == [400, "hyperparameters.new_knob"]


def test_the_record_types_are_one_list(doc: dict[str, Any]) -> None:
    from typing import get_args

    from tuning_service.engine.outcome import TERMINAL_TYPES
    from tuning_service.schema.jobs import RecordType
    from tuning_trainer.events import TERMINAL
    from tuning_trainer.records import RECORDS

    documented = set(doc["components"]["schemas"]["LogRecord"]["discriminator"]["mapping"])
    assert documented == set(get_args(RecordType))  # the SSE event's `event` names the same types
    trainers = {m.model_fields["type"].annotation.__args__[0] for m in RECORDS}  # type: ignore[union-attr]
    assert trainers <= documented
    assert set(TERMINAL) == set(TERMINAL_TYPES) <= trainers

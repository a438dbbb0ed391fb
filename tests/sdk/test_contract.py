"""Contract: the SDK's models against the service's own document and its real answers.

The service defines every public object once (tuning_service/schema, published as `GET /openapi.json`,
components/schemas). The SDK may not import that definition (it is urllib3-only), so it mirrors it by hand,
and these tests hold the two together:

- every object is produced by a real service over real HTTP (jobs driven by the fake trainer, which speaks the
  trainer protocol in milliseconds: tests/service/fake_trainer.py), checked against the service's own
  ResponseModel, decoded with the SDK (`from_dict` and the client's own calls), and compared field by field:
  the value, and the JSON type of the wire value against the type of the SDK attribute (a JSON array is a
  tuple or list, an object an SDK model or a mapping, a number a float, null is None);
- every property of the document is a field of the SDK's model and the other way round, with the same JSON
  types and the same nullability, so a field the service adds fails here until the SDK has it;
- every schema of the document is mirrored, kept as a mapping, or listed with the reason it is not;
- `JobStatus` is the document's enum;
- the stub server's table of what each route answers (objects.py, which checks every hand-written fixture)
  is the document's.

The inference objects (models, chat completions, completions: OpenAI's shapes, schema/inference.py) are
held to the document the same way; of them, the real service here produces the models (the fine-tune of the
succeeded job): generating text needs an engine and a real model, so the completions are checked against the
document's schemas, and every stub fixture of them against the service's own models (objects.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import sys
import threading
import time
import types
import typing
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.sdk.objects import RESPONSE_MODELS, deleted_job_body, validate
from tests.sdk.stub import StubServer, reply
from tests.support.server import DEV_KEY, ServiceEnv, ServiceProcess, write_jsonl
from tuning_sdk import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    Checkpoint,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    Delta,
    EstimateMemory,
    FileDeleted,
    FileError,
    FileObject,
    Hyperparameters,
    JobDeleted,
    JobError,
    JobStatus,
    KeyLimits,
    KeyUsage,
    LogRecord,
    Model,
    ModelDeleted,
    NotFoundError,
    QuotaExceededError,
    TokenLogprob,
    TopLogprob,
    TrainingMetrics,
    TuningClient,
    TuningEstimate,
    TuningJob,
    UnprocessableEntityError,
    Usage,
)
from tuning_sdk.resources.models import _model_path
from tuning_service.schema import files as file_schema
from tuning_service.schema import inference as inference_schema
from tuning_service.schema import jobs as job_schema
from tuning_service.schema import usage as usage_schema

FAKE_TRAINER = Path(__file__).resolve().parents[1] / "service" / "fake_trainer.py"
DEV_KEY_ID = "key_" + hashlib.sha256(DEV_KEY.encode()).hexdigest()[:16]
pytestmark = pytest.mark.timeout(300)

# The document's schema -> the SDK's model of it.
COUNTERPARTS: dict[str, type] = {
    "TuningJob": TuningJob,
    "JobError": JobError,
    "TrainingMetrics": TrainingMetrics,
    "Hyperparameters": Hyperparameters,
    "LogRecord": LogRecord,
    "DeletedTuningJob": JobDeleted,
    "File": FileObject,
    "FileError": FileError,
    "DeletedFile": FileDeleted,
    "Checkpoint": Checkpoint,
    "TuningEstimate": TuningEstimate,
    "EstimateMemory": EstimateMemory,
    "KeyUsage": KeyUsage,
    "KeyLimits": KeyLimits,
    # The inference routes (schema/inference.py).
    "Model": Model,
    "DeletedModel": ModelDeleted,
    "ChatCompletion": ChatCompletion,
    "ChatChoice": ChatChoice,
    "AssistantMessage": AssistantMessage,
    "ChatCompletionChunk": ChatCompletionChunk,
    "ChunkChoice": ChunkChoice,
    "Delta": Delta,
    "ChoiceLogprobs": ChoiceLogprobs,
    "TokenLogprob": TokenLogprob,
    "TopLogprob": TopLogprob,
    "Completion": Completion,
    "CompletionChoice": CompletionChoice,
    "CompletionLogprobs": CompletionLogprobs,
    "Usage": Usage,
}
# Objects the SDK keeps as a plain mapping of what was sent (so no field of theirs can go missing); the real
# objects are still checked key by key against the schema.
KEPT_AS_MAPPING = {
    "CheckpointMetrics": "Checkpoint.metrics (c.metrics['train_loss'], c.train_loss)",
    # A job's trackers: TuningJob.integrations, each as sent (i["type"], i["wandb"]["project"]); the create
    # takes them as dicts of the same shape.
    **dict.fromkeys(
        (
            "WandbIntegration",
            "WandbSettings",
            "MlflowIntegration",
            "MlflowSettings",
            "TensorboardIntegration",
        ),
        "TuningJob.integrations, each tracker a mapping as sent",
    ),
}
# Schemas the SDK has no model of, and why. A new schema in the document fails the accounting test until it
# is mirrored or listed here.
NOT_MIRRORED = {
    "JobStatus": "an enum: JobStatus (test_job_status_is_the_documents_enum)",
    "CreateTuningRequest": "a request body: tunings.create's keyword arguments (and Hyperparameters)",
    "FileUpload": "a request body: files.upload's arguments",
    "TuningJobList": "a page: tunings.list returns CursorPage[TuningJob]",
    "FileList": "a page: files.list returns CursorPage[FileObject]",
    "LogPage": "pages of records: tunings.events / stream_logs(follow=False) iterate LogRecord",
    "LogEvent": "the SSE framing of a record: stream_logs yields its data as a LogRecord",
    "CheckpointList": "tunings.checkpoints returns list[Checkpoint]",
    "Health": "health_check returns the JSON object as a dict (as the original spec's example reads it)",
    "Error": "the error envelope: APIStatusError (code, message, param, line; the whole object in .body)",
    "ErrorDetail": "see Error",
    "JobConfig": "the trainer's job, in a started record: LogRecord.data['config'], as sent",
    "ModelList": "models.list returns list[Model] (the list is not paginated)",
    "ChatCompletionRequest": "a request body: chat.completions.create's keyword arguments",
    "ChatMessage": "a request body's part: chat.completions.create takes messages as dicts, as openai does",
    "TextPart": "see ChatMessage",
    "StreamOptions": "a request body's part: chat.completions.create(stream_options={...})",
    "CompletionRequest": "a request body: completions.create's keyword arguments",
}
# LogRecord is a union of one schema per record type (the trainer's, from tuning_trainer/records.py, and the
# service's): the SDK has one LogRecord for them all, their common fields as attributes, the rest in `data`
# (Document.variants, Comparison.object).
OPENAI_PREFIX = "OpenAI"  # the OpenAI-compatible routes' shapes: for OpenAI's clients, not this SDK
# Fields only the SDK has: `raw` (the object as sent, unknown fields included) on every model that has it,
# `Hyperparameters.extra` (names this SDK does not know yet), `LogRecord.data` (the record type's own
# fields: the document's additionalProperties).
SDK_ONLY = {"raw"}
SDK_ONLY_OF = {"Hyperparameters": {"extra"}, "LogRecord": {"data"}}
# The SDK's Hyperparameters is the request form too: None means "the service's default" there (to_dict leaves
# it out). On a job the service fills every value in, so its types are compared without null.
NULL_MEANS_DEFAULT = {"Hyperparameters"}


# ---- the document ------------------------------------------------------------------------------------------


class Document:
    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.schemas: Mapping[str, Any] = doc["components"]["schemas"]

    def variants(self, schema_name: str) -> dict[str, str]:
        """A discriminated union's schemas by their discriminator value ({} for a plain object)."""
        mapping = self.schemas[schema_name].get("discriminator", {}).get("mapping", {})
        return {value: ref.rsplit("/", 1)[-1] for value, ref in mapping.items()}

    def properties(self, schema_name: str) -> Mapping[str, Any]:
        """An object's properties; a union's: the properties every variant has, required."""
        variants = self.variants(schema_name)
        if not variants:
            return dict(self.schemas[schema_name]["properties"])
        schemas = [self.schemas[v] for v in variants.values()]
        common = set.intersection(*(set(s.get("required", ())) for s in schemas))
        first = schemas[0]["properties"]
        return {name: first[name] for name in first if name in common}

    @staticmethod
    def ref_name(node: Mapping[str, Any]) -> str | None:
        """The schema a property is (or may be, besides null): "#/components/schemas/X" -> "X"."""
        refs = [b["$ref"] for b in [node, *node.get("anyOf", ())] if "$ref" in b]
        return refs[0].rsplit("/", 1)[-1] if refs else None

    def types(self, node: Mapping[str, Any]) -> set[str]:
        """The JSON types a property allows."""
        if "$ref" in node:
            return self.types(self.schemas[node["$ref"].rsplit("/", 1)[-1]])
        if "anyOf" in node:
            return set().union(*(self.types(b) for b in node["anyOf"]))
        if "type" in node:
            t = node["type"]
            return set(t) if isinstance(t, list) else {t}
        values = [node["const"]] if "const" in node else node.get("enum")
        if values is not None:
            return {json_type(v) for v in values}
        return {"any"}

    def items(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        """An array property's item schema."""
        for branch in [node, *node.get("anyOf", ())]:
            if branch.get("type") == "array":
                return dict(branch.get("items", {}))
        return {}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise TypeError(f"not a JSON value: {value!r}")


def annotation_types(hint: Any) -> set[str]:
    """The JSON types an SDK field's annotation can hold."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(annotation_types(a) for a in typing.get_args(hint)))
    if hint is type(None):
        return {"null"}
    if hint is Any:
        return {"any"}
    base = origin or hint
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if base in simple:
        return {simple[base]}
    if base in (tuple, list):
        return {"array"}
    if base in (dict, Mapping) or dataclasses.is_dataclass(base):
        return {"object"}
    raise AssertionError(f"no JSON type for the annotation {hint!r}")


def annotation_classes(hint: Any) -> set[Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(annotation_classes(a) for a in typing.get_args(hint)))
    return {origin or hint}


def sdk_fields(cls: type) -> dict[str, Any]:
    """The SDK model's documented fields and their annotations (SDK-only fields left out)."""
    hints = typing.get_type_hints(cls)
    skip = SDK_ONLY | SDK_ONLY_OF.get(_schema_of(cls), set())
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in skip}


def _schema_of(cls: type) -> str:
    return next(name for name, c in COUNTERPARTS.items() if c is cls)


# ---- comparing a wire object with its SDK decoding ---------------------------------------------------------


class Comparison:
    """Walks a wire object and the SDK's decoding of it side by side, along the document's schema."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[str] = []
        self.seen: set[tuple[str, str, str]] = set()  # (schema, property, JSON type of a real value)

    def object(self, where: str, schema_name: str, wire: Mapping[str, Any], sdk: Any) -> None:
        variants = self.doc.variants(schema_name)
        if variants:  # a union: the variant the discriminator names (a LogRecord's `type`)
            schema_name = variants[wire["type"]]
        schema = self.doc.schemas[schema_name]
        props: Mapping[str, Any] = schema["properties"]
        required = set(schema.get("required", ()))
        for name, prop in props.items():
            if name not in wire and name not in required and "default" not in prop:
                continue  # optional, and absent: nothing was sent (a record's field an older trainer lacks)
            # An optional property the service left out is its default (null) on the wire.
            value = wire[name] if name in wire else prop.get("default")
            self.seen.add((schema_name, name, json_type(value)))
            if dataclasses.is_dataclass(sdk) and not hasattr(sdk, name) and hasattr(sdk, "data"):
                # A record type's own field: in the SDK's LogRecord.data, as sent.
                if sdk.data.get(name) != value:
                    self.problems.append(f"{where}.data[{name!r}]: {sdk.data.get(name)!r} != {value!r}")
                allowed, kind = self.doc.types(prop), json_type(value)
                if kind not in allowed and not (kind == "integer" and "number" in allowed):
                    self.problems.append(f"{where}.{name}: a JSON {kind}, the document allows {allowed}")
                continue
            if dataclasses.is_dataclass(sdk):
                if not hasattr(sdk, name):
                    self.problems.append(f"{where}.{name}: the SDK's {type(sdk).__name__} has no such field")
                    continue
                got = getattr(sdk, name)
            else:  # a mapping kept as sent (KEPT_AS_MAPPING)
                if name not in sdk:
                    self.problems.append(f"{where}[{name!r}]: missing from the SDK's mapping")
                    continue
                got = sdk[name]
            self.value(f"{where}.{name}", prop, value, got)
        extra = {k: v for k, v in wire.items() if k not in props}
        if variants:
            # A LogRecord: every field that is not one of the SDK's attributes is in `data`, and nothing else.
            own = {k: v for k, v in wire.items() if not hasattr(sdk, k) or k == "data"}
            if dict(sdk.data) != own:
                self.problems.append(f"{where}.data: {dict(sdk.data)!r} != the record's own fields {own!r}")
        elif extra:
            self.problems.append(f"{where}: the service sent fields its document lacks: {sorted(extra)}")
        if dataclasses.is_dataclass(sdk) and hasattr(sdk, "raw") and dict(sdk.raw) != dict(wire):
            self.problems.append(f"{where}.raw is not the object as sent")

    def value(self, where: str, prop: Mapping[str, Any], wire: Any, got: Any) -> None:
        allowed = self.doc.types(prop)
        kind = json_type(wire)
        if kind not in allowed and not (kind == "integer" and "number" in allowed) and "any" not in allowed:
            self.problems.append(f"{where}: the service sent a JSON {kind}, the document allows {allowed}")
        ok: bool
        if wire is None:
            ok = got is None
        elif isinstance(wire, bool):
            ok = type(got) is bool and got == wire
        elif isinstance(wire, int):
            # An integer property decodes to int; a number property sent as 3 still decodes to a float.
            ok = type(got) is (int if "integer" in allowed else float) and got == wire
        elif isinstance(wire, float):
            ok = type(got) is float and got == wire
        elif isinstance(wire, str):
            ok = isinstance(got, str) and got == wire
        elif isinstance(wire, list):
            ok = isinstance(got, (tuple, list)) and len(got) == len(wire)
            if ok:
                item = self.doc.items(prop)
                for i, (w, g) in enumerate(zip(wire, got, strict=True)):
                    self.value(f"{where}[{i}]", item, w, g)
        else:
            ref = self.doc.ref_name(prop)
            if ref in COUNTERPARTS:
                ok = isinstance(got, COUNTERPARTS[ref])
                if ok:
                    self.object(where, ref, wire, got)
            elif ref is not None:
                ok = isinstance(got, Mapping) and dict(got) == wire
                if ok:
                    self.object(where, ref, wire, got)
            else:  # a free-form object (metadata)
                ok = isinstance(got, Mapping) and dict(got) == wire
        if not ok:
            self.problems.append(
                f"{where}: the service sent {wire!r} (JSON {kind}), "
                f"the SDK gives {got!r} ({type(got).__name__})"
            )


# ---- a real service, real objects -------------------------------------------------------------------------


class Receiver:
    """Answers every webhook delivery with 204, so the job's webhook record says delivered."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclasses.dataclass
class Produced:
    """What the real service answered (the wire, parsed JSON), by object."""

    doc: Document
    jobs: dict[str, dict[str, Any]]
    files: dict[str, dict[str, Any]]
    records: dict[str, list[dict[str, Any]]]  # job name -> its records (tunings.logs, one page)
    events: list[dict[str, Any]]  # tunings.events of the succeeded job
    checkpoints: dict[str, list[dict[str, Any]]]  # job name -> its checkpoints
    deleted_job: dict[str, Any]
    deleted_file: dict[str, Any]
    usage: dict[str, Any]  # GET /v1/usage, with limits set on the key
    sdk: dict[str, Any]  # what the SDK's own calls returned for the same objects (or raised)
    svc: ServiceProcess  # still running, for the tests of the inference routes
    client: TuningClient


def _ok(r: Any) -> Any:
    assert 200 <= r.status < 300, (r.status, r.text)
    return r.json()


def _trainer_of(job_id: str, timeout: float = 60) -> psutil.Process:
    """The fake trainer of `job_id` (its config path, in its job folder, names the job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline", "status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                    job_id in a for a in p.info["cmdline"] or []
                ):
                    return p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.05)
    raise AssertionError(f"no trainer process for {job_id}")


def _running_at_step(svc: ServiceProcess, job_id: str, step: int = 2, timeout: float = 60) -> None:
    """Wait until a job's trainer has reported `step` (so that a stop leaves a checkpoint past step 0)."""
    deadline = time.monotonic() + timeout
    while True:
        job = svc.wait_for(job_id, "running", timeout=timeout)
        if ((job["metrics"] or {}).get("current_step") or 0) >= step:
            return
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def _records(svc: ServiceProcess, job_id: str, route: str = "logs") -> list[dict[str, Any]]:
    page = _ok(svc.get(f"/v1/tunings.{route}/{job_id}?limit=1000"))
    validate(job_schema.LogPage, page)
    assert not page["has_more"]
    return list(page["data"])


@pytest.fixture(scope="module")
def produced(light_service_env: ServiceEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Produced]:
    receiver = Receiver()
    svc = light_service_env.start(
        "sdk-contract",
        extra_env={
            "TUNING_TRAINER_COMMAND": json.dumps([sys.executable, str(FAKE_TRAINER)]),
            # One at a time: a long job holds the slot, so the next one is seen queued.
            "TUNING_MAX_CONCURRENT_JOBS": "1",
            "TUNING_CANCEL_GRACE_SECONDS": "5",
            "TUNING_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        },
    )
    client = TuningClient(api_key=DEV_KEY, base_url=svc.base_url, timeout=30)
    try:
        yield _produce(svc, client, receiver, tmp_path_factory.mktemp("contract"))
    finally:
        client.close()
        svc.shutdown()
        receiver.stop()


def _produce(svc: ServiceProcess, client: TuningClient, receiver: Receiver, tmp: Path) -> Produced:
    doc = Document(_ok(svc.get("/openapi.json", key=None)))
    svc.cli("keys", "set-webhook", DEV_KEY_ID)  # a signing secret: jobs may then name a webhook_url
    sdk: dict[str, Any] = {}

    # Files: a valid one, one that fails validation on its second line, and preference pairs (all through the
    # SDK).
    good = write_jsonl(tmp / "train.jsonl", [{"text": f"example {i}"} for i in range(4)])
    bad = tmp / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    pairs = [{"prompt": f"question {i}", "chosen": "a good answer", "rejected": "no"} for i in range(4)]
    sdk["file processed"] = client.files.upload(good)
    sdk["file error"] = client.files.upload(bad)
    sdk["file pairs"] = client.files.upload(write_jsonl(tmp / "pairs.jsonl", pairs))
    files = {
        name: _ok(svc.get(f"/v1/files.get/{f.id}")) for name, f in sdk.items() if name.startswith("file")
    }

    # A job that holds the only slot until cancelled, so that the next one is queued.
    blocker = svc.create_job(model="fake:complete?steps=100000&delay=0.05")
    _running_at_step(svc, blocker["id"])
    created = client.tunings.create(
        "fake:complete?steps=4&save=2",
        sdk["file processed"].id,
        validation_file="data/valid.jsonl",
        hyperparameters=Hyperparameters(
            epochs=1, lora_target_modules=["q_proj", "v_proj"], max_steps=4, save_steps=2
        ),
        method="lora",
        suffix="contract",
        seed=7,
        metadata={"team": "sdk", "purpose": "contract"},
        resume_on_restart=True,
        webhook_url=receiver.url,
        webhook_events=["job.succeeded", "job.checkpoint"],
        # The trackers (the fake trainer ignores them) and the governance fields.
        integrations=[
            {"type": "wandb", "wandb": {"project": "contract", "name": "run-1", "tags": ["sdk", "x"]}},
            {"type": "mlflow", "mlflow": {"experiment": "contract"}},
            {"type": "tensorboard"},
        ],
        priority=5,
        max_runtime_seconds=3600,
        auto_retry=1,
    )
    jobs = {"queued": _ok(svc.get(f"/v1/tunings.get/{created.id}"))}
    sdk["job queued"] = client.tunings.get(created.id)
    assert jobs["queued"]["status"] == "queued" and jobs["queued"]["queue_position"] == 1
    _ok(svc.post(f"/v1/tunings.cancel/{blocker['id']}"))
    jobs["cancelled"] = svc.wait_for(blocker["id"], "cancelled")
    jobs["succeeded"] = svc.wait_for(created.id, "succeeded")

    # A preference job (dpo, on pairs) that starts from the succeeded job's adapter. The fake trainer writes
    # no adapter weights, and the service copies them from the source: they are put there as a trainer would.
    (Path(jobs["succeeded"]["adapter_path"]) / "adapter_model.safetensors").write_bytes(b"")
    preference = client.tunings.create(
        "fake:complete?steps=4&save=2",
        sdk["file pairs"].id,
        hyperparameters={"dpo_beta": 0.2},
        method="dpo",
        adapter="lora",
        from_checkpoint=created.id,
    )
    jobs["preference"] = svc.wait_for(preference.id, "succeeded")

    # Failures: killed by a signal, a data problem (data_code, line), out of memory (hint), and interrupted
    # by a signal that was not a cancel (checkpoint_path).
    killed = svc.create_job(model="fake:killself")
    jobs["killed"] = svc.wait_for(killed["id"], "failed")
    data = svc.create_job(model="fake:fail")
    jobs["data error"] = svc.wait_for(data["id"], "failed")
    oom = svc.create_job(model="fake:oom")
    jobs["out of memory"] = svc.wait_for(oom["id"], "failed")
    interrupted = svc.create_job(model="fake:complete?steps=100000&delay=0.05")
    _running_at_step(svc, interrupted["id"])
    _trainer_of(interrupted["id"]).send_signal(signal.SIGTERM)
    jobs["interrupted"] = svc.wait_for(interrupted["id"], "failed")
    for name, job in jobs.items():
        if name != "queued":
            sdk[f"job {name}"] = client.tunings.get(job["id"])

    # The TensorBoard files of the succeeded job (put where the trainer's tensorboard integration writes them:
    # the fake trainer writes none), and the refusals of that download.
    board = Path(jobs["succeeded"]["adapter_path"]).parent / "tensorboard"
    board.mkdir()
    (board / "events.out.tfevents.1764150000.host").write_bytes(b"\0" * 64)
    sdk["tensorboard"] = client.tunings.download(created.id, tmp / "board", artifact="tensorboard")
    sdk["tensorboard missing"] = _raised(
        lambda: client.tunings.download(jobs["killed"]["id"], tmp / "none", artifact="tensorboard")
    )
    sdk["tensorboard checkpoint"] = _raised(
        lambda: client.tunings.download(created.id, tmp / "none", checkpoint=2, artifact="tensorboard")
    )

    # Usage with limits on the key (every job has ended: the GPU hours no longer change), and a create over
    # its queued-jobs quota; then the limits are lifted.
    svc.cli("keys", "update", DEV_KEY_ID, "--max-running-jobs", "3", "--max-queued-jobs", "0")
    usage = _ok(svc.get("/v1/usage"))
    sdk["usage"] = client.usage.retrieve()
    sdk["quota"] = _raised(lambda: client.tunings.create("fake:complete", sdk["file processed"].id))
    svc.cli("keys", "update", DEV_KEY_ID, "--max-running-jobs", "none", "--max-queued-jobs", "none")

    # The succeeded job's webhook deliveries are recorded asynchronously: wait for them, so that its records
    # include the service's `webhook` type and no longer change.
    deadline = time.monotonic() + 30
    while sum(r["type"] == "webhook" for r in _records(svc, created.id)) < 3:  # 2 checkpoints, 1 success
        assert time.monotonic() < deadline, _records(svc, created.id)
        time.sleep(0.1)
    records = {name: _records(svc, jobs[name]["id"]) for name in ("succeeded", "killed", "interrupted")}
    events = _records(svc, created.id, "events")
    sdk["records succeeded"] = list(client.tunings.stream_logs(created.id))  # the SSE stream, to its end
    sdk["events succeeded"] = list(client.tunings.events(created.id))
    checkpoints = {}
    for name in ("succeeded", "cancelled", "interrupted"):
        page = _ok(svc.get(f"/v1/tunings.checkpoints/{jobs[name]['id']}"))
        validate(job_schema.CheckpointList, page)
        checkpoints[name] = list(page["data"])
        sdk[f"checkpoints {name}"] = client.tunings.checkpoints(jobs[name]["id"])
    listed = _ok(svc.get("/v1/tunings.list?limit=100"))
    validate(job_schema.TuningJobList, listed)
    sdk["job list"] = (listed, list(client.tunings.list(limit=100)))
    files_listed = _ok(svc.get("/v1/files.list?limit=100"))
    validate(file_schema.FileList, files_listed)
    sdk["file list"] = (files_listed, list(client.files.list(limit=100)))

    deleted_job = _ok(svc.delete(f"/v1/tunings.delete/{jobs['cancelled']['id']}"))
    sdk["deleted job"] = client.tunings.delete(jobs["out of memory"]["id"])
    deleted_file = _ok(svc.delete(f"/v1/files.delete/{files['file error']['id']}"))
    return Produced(
        doc, jobs, files, records, events, checkpoints, deleted_job, deleted_file, usage, sdk, svc, client
    )


def _raised(call: Any) -> Exception:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("expected the call to raise")


# ---- the objects, decoded ---------------------------------------------------------------------------------


def _assert_same(produced: Produced, where: str, schema: str, wire: Mapping[str, Any], sdk: Any) -> None:
    cmp = Comparison(produced.doc)
    cmp.object(where, schema, wire, sdk)
    assert not cmp.problems, "\n".join(cmp.problems)


JOBS = [
    "queued", "cancelled", "succeeded", "preference", "killed", "data error", "out of memory", "interrupted"
]  # fmt: skip


@pytest.mark.parametrize("name", JOBS)
def test_jobs_decode_field_by_field(produced: Produced, name: str) -> None:
    wire = produced.jobs[name]
    validate(job_schema.TuningJob, wire)
    job = TuningJob.from_dict(wire)
    _assert_same(produced, f"{name} job", "TuningJob", wire, job)
    assert produced.sdk[f"job {name}"] == job  # the client's own call decodes the same
    assert job.status == JobStatus(wire["status"])


def test_the_jobs_are_the_ones_meant(produced: Produced) -> None:
    """The objects above cover what they should: each status, each kind of failure, a full create body."""
    jobs = {name: TuningJob.from_dict(wire) for name, wire in produced.jobs.items()}
    q = jobs["queued"]
    assert q.queue_position == 1 and q.metrics is None and q.error is None and q.started_at is None
    # The legacy method="lora" of the create: sft with the lora adapter.
    assert (q.method, q.adapter, q.from_checkpoint) == ("sft", "lora", None)
    assert (q.seed, q.suffix, q.resume_on_restart) == (7, "contract", True)
    assert q.metadata == {"team": "sdk", "purpose": "contract"}
    assert q.webhook_events == ("job.succeeded", "job.checkpoint")
    assert q.hyperparameters.lora_target_modules == ["q_proj", "v_proj"]
    assert [i["type"] for i in q.integrations] == ["wandb", "mlflow", "tensorboard"]
    assert q.integrations[0]["wandb"] == {
        "project": "contract",
        "name": "run-1",
        "entity": None,
        "tags": ["sdk", "x"],
    }
    assert q.integrations[1]["mlflow"] == {"tracking_uri": None, "experiment": "contract"}
    assert (q.priority, q.max_runtime_seconds, q.auto_retry, q.retries) == (5, 3600, 1, 0)
    assert (jobs["cancelled"].priority, jobs["cancelled"].integrations, jobs["cancelled"].auto_retry) == (
        0,
        (),
        0,
    )
    s = jobs["succeeded"]
    assert s.is_successful and s.fine_tuned_model and s.adapter_path and s.duration is not None
    assert s.metrics is not None and s.metrics.progress == 1.0 and s.metrics.current_step == 4
    assert f"{s.metrics.progress * 100:.1f}%" == "100.0%"  # the original spec's example
    assert s.hyperparameters.epochs == 1 and s.hyperparameters.batch_size == 2  # resolved by the trainer
    assert jobs["cancelled"].status == "cancelled" and jobs["cancelled"].error is None
    assert (jobs["cancelled"].method, jobs["cancelled"].adapter) == ("sft", "qlora")  # the defaults
    p = jobs["preference"]
    assert p.is_successful and (p.method, p.adapter, p.from_checkpoint) == ("dpo", "lora", s.id)
    assert p.hyperparameters.dpo_beta == 0.2 and p.hyperparameters.simpo_gamma_beta_ratio == 0.5
    errors = {name: jobs[name].error for name in ("killed", "data error", "out of memory", "interrupted")}
    assert all(e is not None and e.log_tail for e in errors.values()), errors
    data, oom, stopped = errors["data error"], errors["out of memory"], errors["interrupted"]
    assert data is not None and (data.code, data.data_code, data.line) == ("invalid_data", "invalid_json", 3)
    assert oom is not None and (oom.code, oom.hint) == ("out_of_memory", "lower batch_size")
    assert stopped is not None and stopped.code == "interrupted" and stopped.checkpoint_path


def test_a_trainer_killed_by_a_signal_names_it(produced: Produced) -> None:
    wire = produced.jobs["killed"]
    assert wire["status"] == "failed"
    assert wire["error"]["code"] == "trainer_killed" and wire["error"]["signal"] == "SIGKILL"
    job = produced.sdk["job killed"]
    assert job.error is not None and job.error.signal == "SIGKILL"  # an `int` field read it as None
    assert job.error.exit_code is None
    assert job.error.log_tail == tuple(wire["error"]["log_tail"]) and "about to die" in job.error.log_tail


@pytest.mark.parametrize("name", ["file processed", "file error", "file pairs"])
def test_files_decode_field_by_field(produced: Produced, name: str) -> None:
    wire = produced.files[name]
    validate(file_schema.File, wire)
    f = FileObject.from_dict(wire)
    _assert_same(produced, name, "File", wire, f)
    assert produced.sdk[name] == f  # what upload returned
    if name == "file error":
        assert f.error is not None and f.error.line == 2 and not f.is_processed
    else:
        assert f.is_processed and f.error is None and f.num_examples == 4
        assert f.format == ("chosen_rejected" if name == "file pairs" else "text")


@pytest.mark.parametrize("name", ["succeeded", "killed", "interrupted"])
def test_log_records_decode_field_by_field(produced: Produced, name: str) -> None:
    wires = produced.records[name]
    records = [LogRecord.from_dict(w) for w in wires]
    for wire, rec in zip(wires, records, strict=True):
        validate(job_schema.LogRecord, wire)
        _assert_same(produced, f"{name} record {wire['seq']}", "LogRecord", wire, rec)
        assert rec.to_dict() == wire
    types_ = {r.type for r in records}
    assert {"status", "log", "started"} <= types_, types_
    if name == "succeeded":
        assert {"metrics", "checkpoint", "completed", "webhook"} <= types_, types_
        # stream_logs (the SSE stream) decodes the same; it ends with the status record that makes the job
        # terminal, so a webhook attempt recorded after it is only in the page.
        streamed = produced.sdk["records succeeded"]
        assert streamed == records[: len(streamed)] and streamed[-1].is_terminal_status
        events = [LogRecord.from_dict(w) for w in produced.events]
        assert produced.sdk["events succeeded"] == events
        assert [e for e in records if e.type != "log"] == events


@pytest.mark.parametrize("name", ["succeeded", "cancelled", "interrupted"])
def test_checkpoints_decode_field_by_field(produced: Produced, name: str) -> None:
    wires = produced.checkpoints[name]
    assert wires, f"the {name} job left no checkpoint"
    checkpoints = [Checkpoint.from_dict(w) for w in wires]
    for wire, ckpt in zip(wires, checkpoints, strict=True):
        validate(job_schema.Checkpoint, wire)
        _assert_same(produced, f"{name} checkpoint {wire['step']}", "Checkpoint", wire, ckpt)
        assert ckpt.train_loss == wire["metrics"]["train_loss"]
        assert ckpt.job_id == produced.jobs[name]["id"]
    assert produced.sdk[f"checkpoints {name}"] == checkpoints
    if name == "succeeded":
        assert [c.step for c in checkpoints] == [2, 4]


def test_lists_decode_to_the_same_objects(produced: Produced) -> None:
    for key, cls in (("job list", TuningJob), ("file list", FileObject)):
        page, listed = produced.sdk[key]
        assert listed == [cls.from_dict(w) for w in page["data"]]


def test_deleted_objects_decode_field_by_field(produced: Produced) -> None:
    validate(job_schema.DeletedTuningJob, produced.deleted_job)
    _assert_same(
        produced,
        "deleted job",
        "DeletedTuningJob",
        produced.deleted_job,
        JobDeleted.from_dict(produced.deleted_job),
    )
    by_sdk = produced.sdk["deleted job"]
    assert by_sdk == JobDeleted(id=produced.jobs["out of memory"]["id"], deleted=True, object="tuning.job")
    validate(file_schema.DeletedFile, produced.deleted_file)
    _assert_same(
        produced,
        "deleted file",
        "DeletedFile",
        produced.deleted_file,
        FileDeleted.from_dict(produced.deleted_file),
    )


def test_usage_decodes_field_by_field(produced: Produced) -> None:
    wire = produced.usage
    validate(usage_schema.KeyUsage, wire)
    usage = KeyUsage.from_dict(wire)
    _assert_same(produced, "usage", "KeyUsage", wire, usage)
    assert produced.sdk["usage"] == usage  # client.usage.retrieve() decodes the same
    assert usage.key_id == DEV_KEY_ID and (usage.running_jobs, usage.queued_jobs) == (0, 0)
    assert usage.gpu_hours > 0 and usage.window_days > 0  # the jobs above ran
    assert usage.limits == KeyLimits(max_running_jobs=3, max_queued_jobs=0, max_gpu_hours=None)


def test_a_create_over_the_quota_is_a_quota_exceeded_error(produced: Produced) -> None:
    err = produced.sdk["quota"]
    assert isinstance(err, QuotaExceededError), err
    assert (err.status_code, err.code, err.param) == (429, "quota_exceeded", "max_queued_jobs")
    assert err.request_id and "max_queued_jobs" in err.message


def test_the_tensorboard_files_download(produced: Produced) -> None:
    folder = produced.sdk["tensorboard"]
    assert [p.name for p in folder.iterdir()] == ["events.out.tfevents.1764150000.host"]
    missing, with_checkpoint = produced.sdk["tensorboard missing"], produced.sdk["tensorboard checkpoint"]
    assert isinstance(missing, NotFoundError) and missing.code == "artifact_not_found", missing
    assert isinstance(with_checkpoint, UnprocessableEntityError), with_checkpoint
    assert with_checkpoint.code == "checkpoint_not_applicable" and with_checkpoint.param == "checkpoint"


# ---- the document against the SDK's models -----------------------------------------------------------------


@pytest.mark.parametrize("schema_name", sorted(COUNTERPARTS))
def test_every_field_of_the_document_is_in_the_sdk_and_back(produced: Produced, schema_name: str) -> None:
    doc = produced.doc
    cls = COUNTERPARTS[schema_name]
    fields = sdk_fields(cls)
    documented = doc.properties(schema_name)
    # Iterating the document: a field the service adds fails here until the SDK has it.
    missing = [name for name in documented if name not in fields]
    assert not missing, f"{cls.__name__} lacks the document's {schema_name} fields {missing}"
    unknown = [name for name in fields if name not in documented]
    assert not unknown, f"{cls.__name__} has fields the document's {schema_name} lacks: {unknown}"
    problems = []
    for name, prop in documented.items():
        want, have = doc.types(prop), annotation_types(fields[name])
        if schema_name in NULL_MEANS_DEFAULT:
            want, have = want - {"null"}, have - {"null"}
        if want != have and "any" not in have:
            problems.append(
                f"{cls.__name__}.{name}: the document's JSON types {sorted(want)}, the SDK's {sorted(have)}"
            )
        ref = doc.ref_name(prop)
        if ref is not None and "object" in want:
            classes = annotation_classes(fields[name])
            if ref in COUNTERPARTS:
                if COUNTERPARTS[ref] not in classes:
                    problems.append(
                        f"{cls.__name__}.{name}: is a {ref}, the SDK's {COUNTERPARTS[ref].__name__}"
                    )
            elif ref in KEPT_AS_MAPPING:
                if Mapping not in classes:
                    problems.append(
                        f"{cls.__name__}.{name}: a {ref} is kept as a Mapping ({KEPT_AS_MAPPING[ref]})"
                    )
            else:
                problems.append(
                    f"{cls.__name__}.{name}: a {ref} has no SDK model: mirror it or keep it as a Mapping"
                )
    assert not problems, "\n".join(problems)


def test_every_schema_of_the_document_is_accounted_for(produced: Produced) -> None:
    names = set(produced.doc.schemas)
    records = set(produced.doc.variants("LogRecord").values())
    accounted = set(COUNTERPARTS) | set(KEPT_AS_MAPPING) | set(NOT_MIRRORED) | records
    new = sorted(n for n in names - accounted if not n.startswith(OPENAI_PREFIX))
    assert not new, f"schemas the SDK neither mirrors nor lists in NOT_MIRRORED: {new}"
    gone = sorted(accounted - names)
    assert not gone, f"schemas this test names that the document no longer has: {gone}"
    # A mapping-kept object's fields arrive whole: every one of them was in the real checkpoints.
    seen = {tuple(c["metrics"]) for cs in produced.checkpoints.values() for c in cs}
    assert seen == {tuple(produced.doc.schemas["CheckpointMetrics"]["properties"])}


def test_job_status_is_the_documents_enum(produced: Produced) -> None:
    assert [s.value for s in JobStatus] == produced.doc.schemas["JobStatus"]["enum"]
    terminal = {s.value for s in JobStatus if s.is_terminal()}
    assert terminal == {"succeeded", "failed", "cancelled"}


INFERENCE_ROUTES = ("/v1/models", "/v1/chat/completions", "/v1/completions")


def test_the_stubs_route_table_is_the_documents(produced: Produced) -> None:
    """objects.RESPONSE_MODELS (which checks every stub answer) says what the document says, for every route
    of the native API and of the inference API that answers a JSON object."""
    paths: Mapping[str, Any] = produced.doc.doc["paths"]
    documented: dict[tuple[str, str], str] = {}
    for path, ops in paths.items():
        if not (
            path.startswith(("/v1/tunings.", "/v1/files.", *INFERENCE_ROUTES))
            or path in ("/health", "/v1/usage")
        ):
            continue  # the OpenAI-compatible fine-tuning routes, /openapi.json, /docs, /metrics
        for method, op in ops.items():
            schema = (op["responses"]["200"].get("content", {}).get("application/json") or {}).get("schema")
            refs = [schema] if schema and "$ref" in schema else (schema or {}).get("oneOf", [])
            if refs:
                route = path.split("{", 1)[0]
                documented[(method.upper(), route)] = "|".join(r["$ref"].rsplit("/", 1)[-1] for r in refs)
    assert {key: model.__name__ for key, model in RESPONSE_MODELS.items()} == documented


def test_the_stub_reports_an_answer_the_service_could_not_send() -> None:
    """The check behind every hand-written stub answer works (the `stub` fixture fails a test with these)."""
    server = StubServer().start()
    try:
        with TuningClient(api_key="k", base_url=server.base_url, max_retries=0) as client:
            server.route("DELETE", "/v1/tunings.delete/", reply(200, deleted_job_body("ftjob-7")))
            client.tunings.delete("ftjob-7")
            assert server.contract_problems == []
            server.route("DELETE", "/v1/tunings.delete/", reply(200, {"id": "ftjob-7", "deleted": True}))
            assert client.tunings.delete("ftjob-7").deleted  # the SDK copes; the fixture is still wrong
            (problem,) = server.contract_problems
            assert "DeletedTuningJob" in problem and "object" in problem
            server.route("DELETE", "/v1/tunings.delete/", reply(200, {"deleted": True}, conform=False))
            client.tunings.delete("ftjob-7")  # off the contract on purpose: not reported
            assert len(server.contract_problems) == 1
    finally:
        server.stop()


# ---- the inference routes ----------------------------------------------------------------------------------


def test_models_decode_field_by_field(produced: Produced) -> None:
    """GET /v1/models and /v1/models/{id} of the real service: the succeeded job's fine-tune and its base (a
    fake model whose name holds '?', '&' and '='; the fine-tune's id holds ':' too) travel in the path
    unharmed, decode field by field, and deleting the fine-tune works."""
    svc, client = produced.svc, produced.client
    listed = _ok(svc.get("/v1/models"))
    validate(inference_schema.ModelList, listed)
    models = client.models.list()
    assert models == [Model.from_dict(w) for w in listed["data"]]
    for wire in listed["data"]:
        model = Model.from_dict(wire)
        _assert_same(produced, f"model {wire['id']}", "Model", wire, model)
        assert client.models.retrieve(wire["id"]) == model
    job = produced.jobs["succeeded"]
    (tuned,) = [m for m in models if m.job_id == job["id"]]
    assert (tuned.parent, tuned.owned_by, tuned.method) == (job["model"], DEV_KEY_ID, job["method"])
    assert (tuned.method, tuned.adapter) == ("sft", "lora")
    preference = produced.jobs["preference"]
    (dpo,) = [m for m in models if m.job_id == preference["id"]]
    assert (dpo.method, dpo.adapter, dpo.parent) == ("dpo", "lora", job["model"])
    assert tuned.is_fine_tune and tuned.id.startswith("ft:") and tuned.id.endswith(job["id"])
    assert client.models.retrieve(job["fine_tuned_model"]) == tuned  # the native job's name for it
    (base,) = [m for m in models if m.id == job["model"]]
    assert (base.owned_by, base.parent, base.job_id, base.is_fine_tune) == ("system", None, None, False)

    deleted = _ok(svc.delete(f"/v1/models/{_model_path(tuned.id)}"))
    validate(inference_schema.DeletedModel, deleted)
    _assert_same(produced, "deleted model", "DeletedModel", deleted, ModelDeleted.from_dict(deleted))
    assert ModelDeleted.from_dict(deleted) == ModelDeleted(id=tuned.id, deleted=True, object="model")
    with pytest.raises(NotFoundError) as info:
        client.models.retrieve(tuned.id)
    assert info.value.code == "model_not_found"
    with pytest.raises(NotFoundError):
        client.models.delete(tuned.id)
    assert tuned.id not in [m.id for m in client.models.list()]

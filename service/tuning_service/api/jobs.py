"""The job endpoints: /v1/tunings.create, .get, .list, .cancel, .delete (docs/api.md)."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tuning_trainer.data import CODES as DATA_CODES
from tuning_trainer.data import PLAN_CODES

from ..engine import lineage
from ..errors import APIError, job_not_found
from ..schema.jobs import (
    CreateTuningRequest,
    DeletedTuningJob,
    IdempotencyKey,
    ListJobsQuery,
    TuningEstimate,
    TuningJob,
    TuningJobList,
)
from . import params
from .auth import authenticate
from .context import jobs
from .jobcache import JobCaches
from .operation import Header, Json, links, operation

log = logging.getLogger("tuning_service.api")

JOB_ID = {"type": "string", "examples": ["ftjob-3f2c9a0e8b7d4c1a9e6f0b2d"]}
# What a created job leads to (OpenAPI links: clients and schemathesis's stateful tests follow them).
JOB_LINKS = links(
    "job_id",
    GetJob="getTuning",
    CancelJob="cancelTuning",
    DeleteJob="deleteTuning",
    GetJobLogs="getTuningLogs",
    GetJobEvents="getTuningEvents",
    GetJobCheckpoints="getTuningCheckpoints",
    PauseJob="pauseTuning",
    ResumeJob="resumeTuning",
    DownloadJob="downloadTuning",
)
# What a create can be refused with beyond the request's shape: the data files (the trainer's data codes,
# with `line`), a stored file that failed validation, the idempotency key, the webhook; and a dry run's
# (engine/estimate.py): the model, the data once tokenised, the run itself; the executor's (GPUs).
CREATE_ERRORS = {
    400: ("invalid_json", "invalid_request", "invalid_path"),
    403: ("webhook_url_not_allowed",),
    404: ("file_not_found", "model_not_found", "model_unavailable", *lineage.ERRORS[404]),
    409: ("idempotency_key_reused", "webhook_secret_missing", *lineage.ERRORS[409]),
    422: (
        *lineage.ERRORS[422],
        "invalid_value",
        "invalid_hyperparameter",
        *(c for c in DATA_CODES if c != "file_not_found"),
        *PLAN_CODES,
        "not_enough_gpus",
        "file_unreadable",
        "file_invalid",
    ),
    # Over one of the key's limits (max_queued_jobs, max_gpu_hours): the message names it.
    429: ("quota_exceeded",),
    500: ("estimate_failed",),
    # TUNING_EXECUTOR=ray: the cluster did not answer when asked what GPUs it has (executors/ray.py).
    503: ("executor_unavailable",),
    504: ("estimate_timeout",),
}


@operation(
    "createTuning",
    "Create a tuning job",
    tag="tunings",
    description="Validates the data files and hyperparameters, then queues the job. Send an "
    "`Idempotency-Key` header to make retries safe: the same key and body return the same job "
    '(`Idempotent-Replayed: true`). With `"dry_run": true` no job is made: the answer is a '
    "tuning.estimate, from the trainer's own planning of the job.",
    body=Json(CreateTuningRequest),
    headers=(Header("Idempotency-Key", IdempotencyKey),),
    ok=Json(
        TuningJob, "The queued job (a tuning.estimate for a dry run)", links=JOB_LINKS, also=(TuningEstimate,)
    ),
    errors=CREATE_ERRORS,
)
async def create(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    params.no_query(request)
    idempotency_key = params.idempotency_key(request)
    body = await params.read_body(request, CreateTuningRequest)
    if body.dry_run:
        return JSONResponse(await jobs(request).estimate(owner=owner, request=body))
    job, created = await jobs(request).create(owner=owner, request=body, idempotency_key=idempotency_key)
    if created:
        log.info("job %s created (model=%s, method=%s)", job["id"], job["model"], job["method"])
    headers = {"Idempotent-Replayed": "false" if created else "true"} if idempotency_key else None
    return JSONResponse(job, headers=headers)


# JSON exactly as Starlette's JSONResponse writes it (compact, UTF-8, NaN refused), with one encoder object.
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json_bytes(value: Any) -> bytes:
    return _encoder.encode(value).encode("utf-8")


def _json_response(body: bytes) -> Response:
    return Response(body, media_type="application/json")


# A list page with more jobs than this to encode afresh reads them in one query (JobManager.list) instead of
# one by one.
_MAX_SINGLE_READS = 8


def _caches(request: Request) -> JobCaches:
    state = request.app.state
    manager = jobs(request)
    caches: JobCaches | None = getattr(state, "job_caches", None)
    if caches is None or caches.manager is not manager:
        caches = state.job_caches = JobCaches(manager)  # one per lifespan (a new manager, a new database)
    return caches


def _data_version(request: Request) -> int | None:
    """The database's data_version that authenticate read for this request (None: no key cache)."""
    return request.scope.get("state", {}).get("data_version")  # type: ignore[no-any-return]


@operation(
    "getTuning",
    "Get a job",
    tag="tunings",
    path={"job_id": JOB_ID},
    ok=Json(TuningJob, "The job"),
    errors={404: ("job_not_found",)},
)
async def get(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    job_id = params.job_id(request)
    cache = _caches(request).jobs
    version = _data_version(request)
    body = cache.current(job_id, owner, version)
    if body is not None:
        return _json_response(body)
    manager = jobs(request)
    stamp = await manager.stamp(job_id)
    if stamp is None or stamp.owner != owner:
        raise job_not_found(job_id)
    body = cache.get(job_id, stamp.status, stamp.finished_at)
    if body is None:
        job = await manager.get(job_id, owner=owner)
        body = _json_bytes(job)
        cache.put(job_id, stamp.status, stamp.finished_at, job, body, owner=owner, version=version)
    else:
        cache.confirm(job_id, version)
    return _json_response(body)


async def _page_parts(request: Request, owner: str, q: ListJobsQuery) -> tuple[list[tuple[str, bytes]], bool]:
    """(id, encoded job) of one page, newest first, and whether more follow."""
    manager = jobs(request)
    status = None if q.status is None else q.status.value
    stamps, has_more = await manager.page_stamps(owner=owner, status=status, after=q.after, limit=q.limit)
    cache = _caches(request).jobs
    bodies = [cache.get(*stamp) for stamp in stamps]
    missing = [i for i, b in enumerate(bodies) if b is None]
    if len(missing) > _MAX_SINGLE_READS:
        # A cold page: the manager reads it in one query (the same page: the same filters and cursor).
        found, has_more = await manager.list(owner=owner, status=status, after=q.after, limit=q.limit)
        stamp_of = {s[0]: s for s in stamps}
        parts = []
        for job in found:
            body = _json_bytes(job)
            stamp = stamp_of.get(job["id"])
            if stamp is not None:
                cache.put(stamp[0], stamp[1], stamp[2], job, body, owner=owner)
            parts.append((job["id"], body))
        return parts, has_more
    parts = []
    for (job_id, job_status, finished_at), cached in zip(stamps, bodies, strict=True):
        if cached is None:  # running, queued or not yet cached: read afresh
            try:
                job = await manager.get(job_id, owner=owner)
            except APIError as exc:
                if exc.status_code != 404:
                    raise
                # Deleted (by another worker) since the page was read: read the page again, in one piece.
                found, has_more = await manager.list(owner=owner, status=status, after=q.after, limit=q.limit)
                return [(j["id"], _json_bytes(j)) for j in found], has_more
            cached = _json_bytes(job)
            cache.put(job_id, job_status, finished_at, job, cached, owner=owner)
        parts.append((job_id, cached))
    return parts, has_more


@operation(
    "listTunings",
    "List your jobs, newest first",
    tag="tunings",
    query=ListJobsQuery,
    ok=Json(TuningJobList, "A page of jobs"),
)
async def list_jobs(request: Request) -> Response:
    owner = await authenticate(request)
    q = params.query(request, ListJobsQuery)
    pages = _caches(request).pages
    key, version = (owner, q.status, q.after, q.limit), _data_version(request)
    cached = pages.get(key, version)
    if cached is not None:
        return _json_response(cached)
    parts, has_more = await _page_parts(request, owner, q)
    # The page is spliced from the jobs' encoded JSON: the same bytes JSONResponse would write for
    # {"object": "list", "data": [...], "has_more": ..., "first_id": ..., "last_id": ...}.
    body = b"".join(
        (
            b'{"object":"list","data":[',
            b",".join(b for _, b in parts),
            b'],"has_more":',
            b"true" if has_more else b"false",
            b',"first_id":',
            _json_bytes(parts[0][0] if parts else None),
            b',"last_id":',
            _json_bytes(parts[-1][0] if parts else None),
            b"}",
        )
    )
    pages.put(key, version, body)
    return _json_response(body)


@operation(
    "cancelTuning",
    "Cancel a job",
    tag="tunings",
    description="A queued or paused job is cancelled at once; a running one goes to `cancelling` while the "
    "trainer checkpoints, then `cancelled`.",
    path={"job_id": JOB_ID},
    ok=Json(TuningJob, "The job"),
    errors={404: ("job_not_found",), 409: ("job_terminal",)},
)
async def cancel(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    params.no_query(request)
    job_id = params.job_id(request)
    job = await jobs(request).cancel(job_id, owner=owner)
    log.info("job %s cancel requested: now %s", job_id, job["status"])
    return JSONResponse(job)


@operation(
    "deleteTuning",
    "Delete a finished job and its files",
    tag="tunings",
    path={"job_id": JOB_ID},
    ok=Json(DeletedTuningJob, "Deleted"),
    errors={404: ("job_not_found",), 409: ("job_not_terminal",)},
)
async def delete(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    params.no_query(request)
    job_id = params.job_id(request)
    result = await jobs(request).delete(job_id, owner=owner)
    # Its fine-tune goes with it: a running inference worker drops the adapter (never starts one for this).
    await request.app.state.inference.worker.call({"op": "evict", "adapter": job_id})
    log.info("job %s deleted", job_id)
    return JSONResponse(result)


routes = [
    Route("/v1/tunings.create", create, methods=["POST"]),
    Route("/v1/tunings.get/{job_id}", get, methods=["GET"]),
    Route("/v1/tunings.list", list_jobs, methods=["GET"]),
    Route("/v1/tunings.cancel/{job_id}", cancel, methods=["POST"]),
    Route("/v1/tunings.delete/{job_id}", delete, methods=["DELETE"]),
]

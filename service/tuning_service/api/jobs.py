"""The job endpoints: /v1/tunings.create, .get, .list, .cancel, .delete (docs/api.md)."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import APIError, job_not_found
from .auth import authenticate
from .jobcache import JobCaches
from .requests import (
    check_query,
    parse_json_body,
    query_int,
    query_status,
    validate_create,
    validate_idempotency_key,
    validate_job_id,
)

log = logging.getLogger("tuning_service.api")


def _manager(request: Request) -> Any:
    return request.app.state.manager


async def create(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    check_query(request.query_params)
    settings = request.app.state.settings
    idempotency_key = validate_idempotency_key(request.headers.get("idempotency-key"))
    body = parse_json_body(await request.body())
    job_request = await validate_create(body, settings)
    job, created = await _manager(request).submit(
        owner=owner, request=job_request, idempotency_key=idempotency_key
    )
    if created:
        log.info("job %s created (model=%s, method=%s)", job["id"], job.get("model"), job.get("method"))
    headers = {"Idempotent-Replayed": "false" if created else "true"} if idempotency_key else None
    return JSONResponse(job, headers=headers)


# JSON exactly as Starlette's JSONResponse writes it (compact, UTF-8, NaN refused), with one encoder object.
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json_bytes(value: Any) -> bytes:
    return _encoder.encode(value).encode("utf-8")


def _json_response(body: bytes) -> Response:
    return Response(body, media_type="application/json")


# A list page with more jobs than this to encode afresh reads them in one query (manager.list) instead of
# one by one.
_MAX_SINGLE_READS = 8


def _caches(request: Request) -> JobCaches:
    state = request.app.state
    manager = _manager(request)
    caches: JobCaches | None = getattr(state, "job_caches", None)
    if caches is None or caches.manager is not manager:
        caches = state.job_caches = JobCaches(manager)  # one per lifespan (a new manager, a new database)
    return caches


def _data_version(request: Request) -> int | None:
    """The database's data_version that authenticate read for this request (None: no key cache)."""
    return request.scope.get("state", {}).get("data_version")  # type: ignore[no-any-return]


async def get(request: Request) -> Response:
    owner = await authenticate(request)
    if request.scope.get("query_string"):
        check_query(request.query_params)
    job_id = validate_job_id(request.path_params["job_id"])
    cache = _caches(request).jobs
    version = _data_version(request)
    body = cache.current(job_id, owner, version)
    if body is not None:
        return _json_response(body)
    manager = _manager(request)
    stamp = await manager.store.job_stamp(job_id)
    if stamp is None or stamp["owner"] != owner:
        raise job_not_found(job_id)
    status, finished_at = stamp["status"], stamp["finished_at"]
    body = cache.get(job_id, status, finished_at)
    if body is None:
        job = await manager.get(job_id, owner=owner)
        body = _json_bytes(job)
        cache.put(job_id, status, finished_at, job, body, owner=owner, version=version)
    else:
        cache.confirm(job_id, version)
    return _json_response(body)


async def _page_parts(
    request: Request, owner: str, status: str | None, after: str | None, limit: int
) -> tuple[list[tuple[str, bytes]], bool]:
    """(id, encoded job) of one page, newest first, and whether more follow."""
    manager = _manager(request)
    stamps, has_more = await manager.store.list_job_stamps(
        owner=owner, status=status, after=after, limit=limit
    )
    cache = _caches(request).jobs
    bodies = [cache.get(*stamp) for stamp in stamps]
    missing = [i for i, b in enumerate(bodies) if b is None]
    if len(missing) > _MAX_SINGLE_READS:
        # A cold page: the manager reads it in one query (the same page: the same filters and cursor).
        jobs, has_more = await manager.list(owner=owner, status=status, after=after, limit=limit)
        stamp_of = {s[0]: s for s in stamps}
        parts = []
        for job in jobs:
            body = _json_bytes(job)
            found = stamp_of.get(job["id"])
            if found is not None:
                cache.put(found[0], found[1], found[2], job, body, owner=owner)
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
                jobs, has_more = await manager.list(owner=owner, status=status, after=after, limit=limit)
                return [(j["id"], _json_bytes(j)) for j in jobs], has_more
            cached = _json_bytes(job)
            cache.put(job_id, job_status, finished_at, job, cached, owner=owner)
        parts.append((job_id, cached))
    return parts, has_more


async def list_jobs(request: Request) -> Response:
    owner = await authenticate(request)
    params = request.query_params
    check_query(params, ("limit", "after", "status"))
    limit = query_int(params, "limit", default=20, minimum=1, maximum=100)
    status = query_status(params)
    after = params.get("after") or None
    if after is not None and len(after) > 128:
        raise APIError(400, "invalid_request", "after must be a job id", param="after")
    pages = _caches(request).pages
    key, version = (owner, status, after, limit), _data_version(request)
    cached = pages.get(key, version)
    if cached is not None:
        return _json_response(cached)
    parts, has_more = await _page_parts(request, owner, status, after, limit)
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


async def cancel(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    check_query(request.query_params)
    job_id = validate_job_id(request.path_params["job_id"])
    job = await _manager(request).cancel(job_id, owner=owner)
    log.info("job %s cancel requested: now %s", job_id, job.get("status"))
    return JSONResponse(job)


async def delete(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    check_query(request.query_params)
    job_id = validate_job_id(request.path_params["job_id"])
    result = await _manager(request).delete(job_id, owner=owner)
    log.info("job %s deleted", job_id)
    return JSONResponse(result)


routes = [
    Route("/v1/tunings.create", create, methods=["POST"]),
    Route("/v1/tunings.get/{job_id}", get, methods=["GET"]),
    Route("/v1/tunings.list", list_jobs, methods=["GET"]),
    Route("/v1/tunings.cancel/{job_id}", cancel, methods=["POST"]),
    Route("/v1/tunings.delete/{job_id}", delete, methods=["DELETE"]),
]

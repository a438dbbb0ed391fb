"""The job endpoints: /v1/tunings.create, .get, .list, .cancel, .delete (docs/api.md)."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .auth import authenticate
from .errors import APIError
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


async def get(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    check_query(request.query_params)
    job_id = validate_job_id(request.path_params["job_id"])
    return JSONResponse(await _manager(request).get(job_id, owner=owner))


async def list_jobs(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    params = request.query_params
    check_query(params, ("limit", "after", "status"))
    limit = query_int(params, "limit", default=20, minimum=1, maximum=100)
    status = query_status(params)
    after = params.get("after") or None
    if after is not None and len(after) > 128:
        raise APIError(400, "invalid_request", "after must be a job id", param="after")
    jobs, has_more = await _manager(request).list(owner=owner, status=status, after=after, limit=limit)
    return JSONResponse(
        {
            "object": "list",
            "data": jobs,
            "has_more": has_more,
            "first_id": jobs[0]["id"] if jobs else None,
            "last_id": jobs[-1]["id"] if jobs else None,
        }
    )


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

"""Job capabilities beyond create/get/list: /v1/tunings.events, .checkpoints, .download, .pause, .resume
(docs/api.md, "Events, checkpoints, download" and "Pause and resume")."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..files.download import tar_gz_stream
from .auth import authenticate
from .requests import check_query, query_int, validate_job_id

log = logging.getLogger("tuning_service.api")

MAX_SEQ = 2**62
MAX_STEP = 2**31


def _manager(request: Request) -> Any:
    return request.app.state.manager


async def events(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = validate_job_id(request.path_params["job_id"])
    params = request.query_params
    check_query(params, ("after", "limit"))
    after = query_int(params, "after", default=0, minimum=0, maximum=MAX_SEQ)
    limit = query_int(params, "limit", default=100, minimum=1, maximum=1000)
    # The stream's records without the trainer's raw output lines (`log`): those are what tunings.logs is for.
    records, has_more = await _manager(request).records(
        job_id, owner=owner, after=after, limit=limit, exclude_types=("log",)
    )
    last_seq = int(records[-1]["seq"]) if records else after
    return JSONResponse({"object": "list", "data": records, "has_more": has_more, "last_seq": last_seq})


async def checkpoints(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = validate_job_id(request.path_params["job_id"])
    check_query(request.query_params)
    data = await _manager(request).checkpoints(job_id, owner=owner)
    return JSONResponse({"object": "list", "data": data, "has_more": False})


async def download(request: Request) -> Response:
    owner = await authenticate(request)
    job_id = validate_job_id(request.path_params["job_id"])
    params = request.query_params
    check_query(params, ("checkpoint",))
    step = None
    if "checkpoint" in params:  # an empty value is not a step: 400, like every other integer parameter
        step = query_int(params, "checkpoint", default=0, minimum=0, maximum=MAX_STEP)
    folder, name = await _manager(request).adapter_dir(job_id, owner=owner, checkpoint=step)
    log.info("job %s: download of %s", job_id, name)
    return StreamingResponse(
        tar_gz_stream(folder),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def pause(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = validate_job_id(request.path_params["job_id"])
    check_query(request.query_params)
    job = await _manager(request).pause(job_id, owner=owner)
    log.info("job %s pause requested: now %s", job_id, job.get("status"))
    return JSONResponse(job)


async def resume(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = validate_job_id(request.path_params["job_id"])
    check_query(request.query_params)
    job = await _manager(request).resume(job_id, owner=owner)
    return JSONResponse(job)


routes = [
    Route("/v1/tunings.events/{job_id}", events, methods=["GET"]),
    Route("/v1/tunings.checkpoints/{job_id}", checkpoints, methods=["GET"]),
    Route("/v1/tunings.download/{job_id}", download, methods=["GET"]),
    Route("/v1/tunings.pause/{job_id}", pause, methods=["POST"]),
    Route("/v1/tunings.resume/{job_id}", resume, methods=["POST"]),
]

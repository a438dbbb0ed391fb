"""Job capabilities beyond create/get/list: /v1/tunings.events, .checkpoints, .download, .pause, .resume
(docs/api.md, "Events, checkpoints, download" and "Pause and resume")."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import APIError
from ..files.download import tar_gz_stream
from ..schema.jobs import CheckpointList, DownloadQuery, EventsQuery, LogPage, TuningJob
from . import params
from .auth import authenticate
from .context import jobs
from .jobs import JOB_ID
from .operation import Content, Json, operation

log = logging.getLogger("tuning_service.api")


@operation(
    "getTuningEvents",
    "A job's records without raw log lines, oldest first",
    tag="tunings",
    path={"job_id": JOB_ID},
    query=EventsQuery,
    ok=Json(LogPage, "A page of records"),
    errors={404: ("job_not_found",)},
)
async def events(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = params.job_id(request)
    q = params.query(request, EventsQuery)
    # The stream's records without the trainer's raw output lines (`log`): those are what tunings.logs is for.
    records = await jobs(request).records(job_id, owner=owner)
    page, has_more = await records.page(after=q.after, limit=q.limit, exclude_types=("log",))
    last_seq = int(page[-1]["seq"]) if page else q.after
    return JSONResponse({"object": "list", "data": page, "has_more": has_more, "last_seq": last_seq})


@operation(
    "getTuningCheckpoints",
    "A job's checkpoints on disk, with the metrics at each step",
    tag="tunings",
    path={"job_id": JOB_ID},
    ok=Json(CheckpointList, "The checkpoints, oldest first"),
    errors={404: ("job_not_found",)},
)
async def checkpoints(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = params.job_id(request)
    params.no_query(request)
    data = await jobs(request).checkpoints(job_id, owner=owner)
    return JSONResponse({"object": "list", "data": data, "has_more": False})


@operation(
    "downloadTuning",
    "Download the final adapter (or a checkpoint, or the TensorBoard files) as tar.gz",
    tag="tunings",
    path={"job_id": JOB_ID},
    query=DownloadQuery,
    ok=Content(
        {"application/gzip": {"type": "string", "format": "binary"}},
        "A tar.gz stream of the adapter folder (members at the top level), or of the job's `tensorboard/` "
        "folder (artifact=tensorboard)",
    ),
    errors={
        404: ("job_not_found", "checkpoint_not_found", "artifact_not_found"),
        409: ("adapter_not_ready",),
        # A rule between two query parameters, which OpenAPI's parameter list cannot state.
        422: ("checkpoint_not_applicable",),
    },
)
async def download(request: Request) -> Response:
    owner = await authenticate(request)
    job_id = params.job_id(request)
    q = params.query(request, DownloadQuery)
    if q.artifact == "tensorboard":
        if q.checkpoint is not None:
            raise APIError(
                422,
                "checkpoint_not_applicable",
                "checkpoint selects an adapter; artifact=tensorboard downloads the job's TensorBoard files, "
                "which are not per checkpoint: leave checkpoint out",
                param="checkpoint",
            )
        folder, name = await jobs(request).tensorboard_dir(job_id, owner=owner)
    else:
        folder, name = await jobs(request).adapter_dir(job_id, owner=owner, checkpoint=q.checkpoint)
    log.info("job %s: download of %s", job_id, name)
    return StreamingResponse(
        tar_gz_stream(folder),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@operation(
    "pauseTuning",
    "Pause a job (the trainer checkpoints, then stops)",
    tag="tunings",
    path={"job_id": JOB_ID},
    ok=Json(TuningJob, "The job (`paused` or `pausing`)"),
    errors={404: ("job_not_found",), 409: ("job_not_pausable",)},
)
async def pause(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = params.job_id(request)
    params.no_query(request)
    job = await jobs(request).pause(job_id, owner=owner)
    log.info("job %s pause requested: now %s", job_id, job["status"])
    return JSONResponse(job)


@operation(
    "resumeTuning",
    "Resume a paused, failed or cancelled job from its newest checkpoint",
    tag="tunings",
    path={"job_id": JOB_ID},
    ok=Json(TuningJob, "The job, queued"),
    errors={
        404: ("job_not_found",),
        409: ("job_not_resumable", "no_checkpoint"),
        429: ("quota_exceeded",),  # it queues the job again: the key's max_queued_jobs, max_gpu_hours
    },
)
async def resume(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    job_id = params.job_id(request)
    params.no_query(request)
    job = await jobs(request).resume(job_id, owner=owner)
    return JSONResponse(job)


routes = [
    Route("/v1/tunings.events/{job_id}", events, methods=["GET"]),
    Route("/v1/tunings.checkpoints/{job_id}", checkpoints, methods=["GET"]),
    Route("/v1/tunings.download/{job_id}", download, methods=["GET"]),
    Route("/v1/tunings.pause/{job_id}", pause, methods=["POST"]),
    Route("/v1/tunings.resume/{job_id}", resume, methods=["POST"]),
]

"""OpenAI-compatible routes: /v1/files and /v1/fine_tuning/jobs (docs/openai-compat.md).

Thin adapters over the same job facade and file store as the native routes, so a job or file made through
either surface is visible through both. Bodies and objects are OpenAI's shapes (schema/openai.py), mapped
in compat.py; errors keep OpenAI's envelope (`{"error": {"message", "type", "param", "code"}}`), with
invalid values reported as 400 as OpenAI does.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..api import params
from ..api.auth import authenticate
from ..api.context import files, jobs
from ..api.files import CONTENT, FILE_ID, UPLOAD, UPLOAD_ERRORS, content_response, file_id
from ..api.jobs import CREATE_ERRORS, JOB_ID
from ..api.operation import Header, Json, links, operation
from ..engine.facade import JobManager
from ..errors import APIError
from ..schema.base import Page
from ..schema.files import DeletedFile, File, FileList
from ..schema.jobs import IdempotencyKey, TuningEstimate
from ..schema.openai import (
    OpenAICheckpointList,
    OpenAICheckpointsQuery,
    OpenAICreateJob,
    OpenAIEventList,
    OpenAIEventsQuery,
    OpenAIJob,
    OpenAIJobList,
    OpenAIListFilesQuery,
    OpenAIListJobsQuery,
)
from . import compat as oc

log = logging.getLogger("tuning_service.openai")

Handler = Callable[[Request], Awaitable[Response]]
# The key is all that lies between "metadata[" and the last "]": a metadata key may be any string, brackets
# included (metadata[a][b] is the key "a][b", not a nested object: the metadata of a job is flat).
_METADATA_QUERY = re.compile(r"^metadata\[(.{1,64})\]$", re.DOTALL)
FILE_LINKS = links("file_id", GetFile="openaiGetFile", GetFileContent="openaiFileContent",
                   DeleteFile="openaiDeleteFile")  # fmt: skip
JOB_LINKS = links(
    "job_id",
    GetJob="openaiGetJob",
    CancelJob="openaiCancelJob",
    PauseJob="openaiPauseJob",
    ResumeJob="openaiResumeJob",
    ListEvents="openaiListEvents",
    ListCheckpoints="openaiListCheckpoints",
)


def _openai(errors: Mapping[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    """OpenAI's statuses for a native route's codes: what is 422 natively is 400 here."""
    out: dict[int, tuple[str, ...]] = {}
    for status, codes in errors.items():
        status = 400 if status == 422 else status
        out[status] = (*out.get(status, ()), *codes)
    return out


def openai_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except APIError as exc:
            raise oc.openai_error(exc) from None

    return wrapped


def openai_operation(
    operation_id: str, summary: str, *, errors: Mapping[int, tuple[str, ...]] | None = None, **kwargs: Any
) -> Callable[[Handler], Handler]:
    """@operation for an OpenAI route: tagged `openai`, its errors in OpenAI's statuses and envelope."""
    describe = operation(operation_id, summary, tag="openai", errors=_openai(errors or {}), **kwargs)
    return lambda handler: describe(openai_errors(handler))


def _page(data: list[dict[str, Any]], has_more: bool) -> JSONResponse:
    return JSONResponse(Page.body(data, has_more))


# ---- files -----------------------------------------------------------------------------------------------


@openai_operation(
    "openaiCreateFile",
    "OpenAI: upload a file",
    body=UPLOAD,
    ok=Json(File, "The file", links=FILE_LINKS),
    errors=UPLOAD_ERRORS,
)
async def create_file(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    return JSONResponse(await files(request).upload(request, owner))


@openai_operation(
    "openaiListFiles", "OpenAI: list files", query=OpenAIListFilesQuery, ok=Json(FileList, "A page of files")
)
async def list_files(request: Request) -> Response:
    owner = await authenticate(request)
    q = params.query(request, OpenAIListFilesQuery)
    found, has_more = await files(request).list(owner=owner, purpose=q.purpose, after=q.after, limit=q.limit)
    return _page(found, has_more)


@openai_operation(
    "openaiGetFile",
    "OpenAI: get a file",
    path={"file_id": FILE_ID},
    ok=Json(File, "The file"),
    errors={404: ("file_not_found",)},
)
async def get_file(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    return JSONResponse(await files(request).get(file_id(request), owner))


@openai_operation(
    "openaiDeleteFile",
    "OpenAI: delete a file",
    path={"file_id": FILE_ID},
    ok=Json(DeletedFile, "Deleted"),
    errors={404: ("file_not_found",), 409: ("file_in_use",)},
)
async def delete_file(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    return JSONResponse(await files(request).delete(file_id(request), owner))


@openai_operation(
    "openaiFileContent",
    "OpenAI: a file's bytes",
    path={"file_id": FILE_ID},
    ok=CONTENT,
    errors={404: ("file_not_found",)},
)
async def file_content(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    path, filename = await files(request).content_path(file_id(request), owner)
    return content_response(path, filename)


# ---- jobs ------------------------------------------------------------------------------------------------


@openai_operation(
    "openaiCreateJob",
    "OpenAI: create a fine-tuning job",
    body=Json(OpenAICreateJob),
    headers=(Header("Idempotency-Key", IdempotencyKey),),
    ok=Json(
        OpenAIJob,
        "The job (the native tuning.estimate for a dry run)",
        links=JOB_LINKS,
        also=(TuningEstimate,),
    ),
    errors={**CREATE_ERRORS, 400: (*CREATE_ERRORS[400], "unsupported_method")},
)
async def create_job(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    idempotency_key = params.idempotency_key(request)
    body = await params.read_body(request, OpenAICreateJob)
    if body.dry_run:
        return JSONResponse(await jobs(request).estimate(owner=owner, request=body.to_native()))
    job, created = await jobs(request).create(
        owner=owner, request=body.to_native(), idempotency_key=idempotency_key
    )
    if created:
        log.info("job %s created through the OpenAI-compatible API (model=%s)", job["id"], job["model"])
    return JSONResponse(oc.openai_job(job, owner))


@openai_operation(
    "openaiListJobs",
    "OpenAI: list jobs (metadata[k]=v filters)",
    query=OpenAIListJobsQuery,
    ok=Json(OpenAIJobList, "A page of jobs"),
)
async def list_jobs(request: Request) -> Response:
    owner = await authenticate(request)
    metadata: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, value in request.query_params.multi_items():
        m = _METADATA_QUERY.match(name)
        if m:
            metadata[m.group(1)] = value
        elif name.startswith("metadata"):
            raise oc.bad(name[:80], "filter by metadata as metadata[KEY]=VALUE")
        else:
            values[name] = value
    q = params.query_values({**values, "metadata": metadata or None}, OpenAIListJobsQuery)
    found, has_more = await jobs(request).list(
        owner=owner, status=None, after=q.after, limit=q.limit, metadata=q.metadata
    )
    return _page([oc.openai_job(j, owner) for j in found], has_more)


def _job_route(
    operation_id: str,
    summary: str,
    act: Callable[[JobManager], Callable[..., Awaitable[dict[str, Any]]]],
    conflicts: tuple[str, ...] = (),
    extra_errors: dict[int, tuple[str, ...]] | None = None,
) -> Handler:
    """A route that does one thing to a job and answers with it as OpenAI's object."""

    async def handler(request: Request) -> Response:
        owner = await authenticate(request)
        params.no_query(request)
        job = await act(jobs(request))(params.job_id(request), owner=owner)
        return JSONResponse(oc.openai_job(job, owner))

    handler.__name__ = handler.__qualname__ = operation_id
    errors = {404: ("job_not_found",), **({409: conflicts} if conflicts else {}), **(extra_errors or {})}
    describe = openai_operation(
        operation_id, summary, path={"job_id": JOB_ID}, ok=Json(OpenAIJob, "The job"), errors=errors
    )
    return describe(handler)


get_job = _job_route("openaiGetJob", "OpenAI: get a job", lambda m: m.get)
cancel_job = _job_route("openaiCancelJob", "OpenAI: cancel a job", lambda m: m.cancel, ("job_terminal",))
pause_job = _job_route("openaiPauseJob", "OpenAI: pause a job", lambda m: m.pause, ("job_not_pausable",))
resume_job = _job_route(
    "openaiResumeJob",
    "OpenAI: resume a job",
    lambda m: m.resume,
    ("job_not_resumable", "no_checkpoint"),
    {429: ("quota_exceeded",)},
)


@openai_operation(
    "openaiListEvents",
    "OpenAI: a job's events, newest first",
    path={"job_id": JOB_ID},
    query=OpenAIEventsQuery,
    ok=Json(OpenAIEventList, "A page of events"),
    errors={404: ("job_not_found",)},
)
async def list_events(request: Request) -> Response:
    owner = await authenticate(request)
    job_id = params.job_id(request)
    q = params.query(request, OpenAIEventsQuery)
    records = await jobs(request).records(job_id, owner=owner)
    before = None if q.after is None else oc.parse_event_id(job_id, q.after)
    if q.after is not None and before is None:  # another job's event id: nothing comes after it here
        return _page([], False)
    # Newest first, like OpenAI; `after` is the last event id of the previous page.
    page, has_more = await records.page(
        before=before, limit=q.limit, exclude_types=("log",), newest_first=True
    )
    return _page([oc.openai_event(job_id, r) for r in page], has_more)


@openai_operation(
    "openaiListCheckpoints",
    "OpenAI: a job's checkpoints, newest first",
    path={"job_id": JOB_ID},
    query=OpenAICheckpointsQuery,
    ok=Json(OpenAICheckpointList, "A page of checkpoints"),
    errors={404: ("job_not_found",)},
)
async def list_checkpoints(request: Request) -> Response:
    owner = await authenticate(request)
    job_id = params.job_id(request)
    q = params.query(request, OpenAICheckpointsQuery)
    manager = jobs(request)
    job = await manager.get(job_id, owner=owner)
    items = [
        oc.openai_checkpoint(job, owner, c) for c in reversed(await manager.checkpoints(job_id, owner=owner))
    ]
    if q.after is not None:
        ids = [c["id"] for c in items]
        # A checkpoint id that is not (or no longer) one of this job's: nothing comes after it (an empty page,
        # as for the list routes' cursors).
        items = items[ids.index(q.after) + 1 :] if q.after in ids else []
    return _page(items[: q.limit], len(items) > q.limit)


routes = [
    Route("/v1/files", create_file, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", get_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    Route("/v1/fine_tuning/jobs", create_job, methods=["POST"]),
    Route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/v1/fine_tuning/jobs/{job_id}/pause", pause_job, methods=["POST"]),
    Route("/v1/fine_tuning/jobs/{job_id}/resume", resume_job, methods=["POST"]),
    Route("/v1/fine_tuning/jobs/{job_id}/events", list_events, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints, methods=["GET"]),
]

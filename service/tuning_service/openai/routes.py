"""OpenAI-compatible routes: /v1/files and /v1/fine_tuning/jobs (docs/openai-compat.md).

Thin adapters over the same JobManager and file store as the native routes, so a job or file made through
either surface is visible through both. Objects are mapped in openai_compat.py; errors keep OpenAI's envelope
(`{"error": {"message", "type", "param", "code"}}`), with invalid values reported as 400 as OpenAI does.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..api.auth import authenticate
from ..api.files import content_response, file_id_param
from ..api.requests import (
    check_query,
    parse_json_body,
    query_int,
    validate_create,
    validate_idempotency_key,
    validate_job_id,
)
from ..errors import APIError
from ..files.store import PURPOSES
from . import compat as oc

log = logging.getLogger("tuning_service.openai")

Handler = Callable[[Request], Awaitable[Response]]
_METADATA_QUERY = re.compile(r"^metadata\[(.{1,64})\]$", re.DOTALL)  # any key (newlines too)


def openai_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except APIError as exc:
            raise oc.openai_error(exc) from None

    return wrapped


def _manager(request: Request) -> Any:
    return request.app.state.manager


def _no_query(request: Request) -> None:
    check_query(request.query_params)


def _after(request: Request) -> str | None:
    after = request.query_params.get("after") or None
    if after is not None and len(after) > 128:
        raise oc.bad("after", "after must be an id from the previous page")
    return after


def _page(data: list[dict[str, Any]], has_more: bool) -> JSONResponse:
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


# ---- files -----------------------------------------------------------------------------------------------


@openai_errors
async def create_file(request: Request) -> Response:
    owner = await authenticate(request)
    _no_query(request)
    return JSONResponse(await _manager(request).files.upload(request, owner))


@openai_errors
async def list_files(request: Request) -> Response:
    owner = await authenticate(request)
    params = request.query_params
    check_query(params, ("limit", "after", "order", "purpose"))
    # OpenAI's default page is large (10000); the cursor makes any size work.
    limit = query_int(params, "limit", default=10000, minimum=1, maximum=10000)
    order = params.get("order") or "desc"
    if order != "desc":
        raise oc.bad(
            "order", "order must be 'desc' (newest first): the only order this service lists files in"
        )
    purpose = params.get("purpose")
    if purpose is not None and purpose not in PURPOSES:
        raise oc.bad("purpose", f"purpose must be one of {', '.join(PURPOSES)}, got {purpose[:32]!r}")
    files, has_more = await _manager(request).files.list(
        owner=owner, purpose=purpose, after=_after(request), limit=limit
    )
    return _page(files, has_more)


@openai_errors
async def get_file(request: Request) -> Response:
    owner = await authenticate(request)
    _no_query(request)
    return JSONResponse(await _manager(request).files.get(file_id_param(request), owner))


@openai_errors
async def delete_file(request: Request) -> Response:
    owner = await authenticate(request)
    _no_query(request)
    return JSONResponse(await _manager(request).files.delete(file_id_param(request), owner))


@openai_errors
async def file_content(request: Request) -> Response:
    owner = await authenticate(request)
    _no_query(request)
    path, filename = await _manager(request).files.content_path(file_id_param(request), owner)
    return content_response(path, filename)


# ---- jobs ------------------------------------------------------------------------------------------------


@openai_errors
async def create_job(request: Request) -> Response:
    owner = await authenticate(request)
    _no_query(request)
    idempotency_key = validate_idempotency_key(request.headers.get("idempotency-key"))
    native = oc.native_create_body(parse_json_body(await request.body()))
    job_request = await validate_create(native, request.app.state.settings)
    job, created = await _manager(request).submit(
        owner=owner, request=job_request, idempotency_key=idempotency_key
    )
    if created:
        log.info("job %s created through the OpenAI-compatible API (model=%s)", job["id"], job["model"])
    return JSONResponse(oc.openai_job(job, owner))


@openai_errors
async def list_jobs(request: Request) -> Response:
    owner = await authenticate(request)
    params = request.query_params
    limit = query_int(params, "limit", default=20, minimum=1, maximum=100)
    metadata: dict[str, str] = {}
    for name, value in params.multi_items():
        m = _METADATA_QUERY.match(name)
        if m:
            metadata[m.group(1)] = value
        elif name.startswith("metadata"):
            raise oc.bad(name[:80], "filter by metadata as metadata[KEY]=VALUE")
    check_query([n for n in params if not _METADATA_QUERY.match(n)], ("limit", "after"))
    jobs, has_more = await _manager(request).list(
        owner=owner, status=None, after=_after(request), limit=limit, metadata=metadata or None
    )
    return _page([oc.openai_job(j, owner) for j in jobs], has_more)


def _job_id(request: Request) -> str:
    return validate_job_id(request.path_params["job_id"])


@openai_errors
async def get_job(request: Request) -> Response:
    owner = await authenticate(request)
    _no_query(request)
    return JSONResponse(oc.openai_job(await _manager(request).get(_job_id(request), owner=owner), owner))


@openai_errors
async def cancel_job(request: Request) -> Response:
    owner = await authenticate(request)
    _no_query(request)
    return JSONResponse(oc.openai_job(await _manager(request).cancel(_job_id(request), owner=owner), owner))


@openai_errors
async def pause_job(request: Request) -> Response:
    owner = await authenticate(request)
    _no_query(request)
    return JSONResponse(oc.openai_job(await _manager(request).pause(_job_id(request), owner=owner), owner))


@openai_errors
async def resume_job(request: Request) -> Response:
    owner = await authenticate(request)
    _no_query(request)
    return JSONResponse(oc.openai_job(await _manager(request).resume(_job_id(request), owner=owner), owner))


@openai_errors
async def list_events(request: Request) -> Response:
    owner = await authenticate(request)
    job_id = _job_id(request)
    check_query(request.query_params, ("limit", "after"))
    limit = query_int(request.query_params, "limit", default=20, minimum=1, maximum=1000)
    after = _after(request)
    before = None if after is None else oc.parse_event_id(job_id, after)
    if after is not None and before is None:  # another job's event id: nothing comes after it here
        await _manager(request).get(job_id, owner=owner)  # still 404 for an unknown job
        return _page([], False)
    # Newest first, like OpenAI; `after` is the last event id of the previous page.
    records, has_more = await _manager(request).records(
        job_id, owner=owner, before=before, limit=limit, exclude_types=("log",), newest_first=True
    )
    return _page([oc.openai_event(job_id, r) for r in records], has_more)


@openai_errors
async def list_checkpoints(request: Request) -> Response:
    owner = await authenticate(request)
    job_id = _job_id(request)
    check_query(request.query_params, ("limit", "after"))
    limit = query_int(request.query_params, "limit", default=10, minimum=1, maximum=1000)
    manager = _manager(request)
    job = await manager.get(job_id, owner=owner)
    items = [
        oc.openai_checkpoint(job, owner, c) for c in reversed(await manager.checkpoints(job_id, owner=owner))
    ]
    after = _after(request)
    if after is not None:
        if not oc.CHECKPOINT_ID_RE.match(after):
            raise oc.bad("after", f"after must be a checkpoint id (ftckpt-<job>-<step>), got {after[:80]!r}")
        ids = [c["id"] for c in items]
        # A checkpoint id that is not (or no longer) one of this job's: nothing comes after it (empty page,
        # as for the list routes' cursors).
        items = items[ids.index(after) + 1 :] if after in ids else []
    return _page(items[:limit], len(items) > limit)


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

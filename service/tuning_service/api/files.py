"""The file endpoints: /v1/files.upload, .list, .get, .content, .delete (docs/api.md, "Files")."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import APIError
from ..files.store import PURPOSES, file_not_found, is_file_id
from .auth import authenticate
from .requests import check_query, query_int

log = logging.getLogger("tuning_service.api")


def _files(request: Request) -> Any:
    return request.app.state.manager.files


def file_id_param(request: Request) -> str:
    file_id = str(request.path_params["file_id"])
    if not is_file_id(file_id):  # cannot exist: the same 404 as an unknown id
        raise file_not_found(file_id)
    return file_id


def list_query(request: Request) -> tuple[int, str | None, str | None]:
    params = request.query_params
    limit = query_int(params, "limit", default=20, minimum=1, maximum=100)
    after = params.get("after") or None
    if after is not None and len(after) > 128:
        raise APIError(400, "invalid_request", "after must be a file id", param="after")
    purpose = params.get("purpose") or None
    if purpose is not None and purpose not in PURPOSES:
        raise APIError(400, "invalid_value", f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
    return limit, after, purpose


def content_response(path: Any, filename: str) -> Response:
    return FileResponse(path, media_type="application/jsonl", filename=filename)


async def upload(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    check_query(request.query_params)
    f = await _files(request).upload(request, owner)
    log.info("file %s uploaded (%d bytes, %s)", f["id"], f["bytes"], f["status"])
    return JSONResponse(f)


async def list_files(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    check_query(request.query_params, ("limit", "after", "purpose"))
    limit, after, purpose = list_query(request)
    files, has_more = await _files(request).list(owner=owner, purpose=purpose, after=after, limit=limit)
    return JSONResponse(
        {
            "object": "list",
            "data": files,
            "has_more": has_more,
            "first_id": files[0]["id"] if files else None,
            "last_id": files[-1]["id"] if files else None,
        }
    )


async def get(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    check_query(request.query_params)
    return JSONResponse(await _files(request).get(file_id_param(request), owner))


async def content(request: Request) -> Response:
    owner = await authenticate(request)
    check_query(request.query_params)
    path, filename = await _files(request).content_path(file_id_param(request), owner)
    return content_response(path, filename)


async def delete(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    check_query(request.query_params)
    file_id = file_id_param(request)
    result = await _files(request).delete(file_id, owner)
    log.info("file %s deleted", file_id)
    return JSONResponse(result)


UPLOAD_PATHS = ("/v1/files.upload", "/v1/files")

routes = [
    Route("/v1/files.upload", upload, methods=["POST"]),
    Route("/v1/files.list", list_files, methods=["GET"]),
    Route("/v1/files.get/{file_id}", get, methods=["GET"]),
    Route("/v1/files.content/{file_id}", content, methods=["GET"]),
    Route("/v1/files.delete/{file_id}", delete, methods=["DELETE"]),
]

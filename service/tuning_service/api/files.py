"""The file endpoints: /v1/files.upload, .list, .get, .content, .delete (docs/api.md, "Files")."""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..files.store import file_not_found, is_file_id
from ..schema.files import DeletedFile, File, FileList, FileUpload, ListFilesQuery
from . import params
from .auth import authenticate
from .context import files
from .operation import Content, Json, links, operation

log = logging.getLogger("tuning_service.api")

FILE_ID = {"type": "string", "pattern": "^file-", "examples": ["file-5d1c0e9a7b3f4a2c8e6d0b1f"]}
UPLOAD = Content({"multipart/form-data": FileUpload})
UPLOAD_ERRORS = {
    400: ("invalid_request",),
    413: ("file_too_large",),
    422: ("invalid_value",),
}
CONTENT = Content({"application/jsonl": {"type": "string"}}, "The file as uploaded")
FILE_LINKS = links("file_id", GetFile="getFile", GetFileContent="getFileContent", DeleteFile="deleteFile")


def file_id(request: Request) -> str:
    value = str(request.path_params["file_id"])
    if not is_file_id(value):  # cannot exist: the same 404 as an unknown id
        raise file_not_found(value)
    return value


def content_response(path: Path, filename: str) -> Response:
    return FileResponse(path, media_type="application/jsonl", filename=filename)


@operation(
    "uploadFile",
    "Upload a JSONL file (validated on upload)",
    tag="files",
    body=UPLOAD,
    ok=Json(File, "The stored file (`processed` or `error`)", links=FILE_LINKS),
    errors=UPLOAD_ERRORS,
)
async def upload(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    params.no_query(request)
    f = await files(request).upload(request, owner)
    log.info("file %s uploaded (%d bytes, %s)", f["id"], f["bytes"], f["status"])
    return JSONResponse(f)


@operation(
    "listFiles",
    "List your files, newest first",
    tag="files",
    query=ListFilesQuery,
    ok=Json(FileList, "A page of files"),
)
async def list_files(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    q = params.query(request, ListFilesQuery)
    found, has_more = await files(request).list(owner=owner, purpose=q.purpose, after=q.after, limit=q.limit)
    return JSONResponse(FileList.body(found, has_more))


@operation(
    "getFile",
    "Get a file",
    tag="files",
    path={"file_id": FILE_ID},
    ok=Json(File, "The file"),
    errors={404: ("file_not_found",)},
)
async def get(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    params.no_query(request)
    return JSONResponse(await files(request).get(file_id(request), owner))


@operation(
    "getFileContent",
    "Download a file's bytes",
    tag="files",
    path={"file_id": FILE_ID},
    ok=CONTENT,
    errors={404: ("file_not_found",)},
)
async def content(request: Request) -> Response:
    owner = await authenticate(request)
    params.no_query(request)
    path, filename = await files(request).content_path(file_id(request), owner)
    return content_response(path, filename)


@operation(
    "deleteFile",
    "Delete a file (not while an unfinished job uses it)",
    tag="files",
    path={"file_id": FILE_ID},
    ok=Json(DeletedFile, "Deleted"),
    errors={404: ("file_not_found",), 409: ("file_in_use",)},
)
async def delete(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    params.no_query(request)
    fid = file_id(request)
    result = await files(request).delete(fid, owner)
    log.info("file %s deleted", fid)
    return JSONResponse(result)


UPLOAD_PATHS = ("/v1/files.upload", "/v1/files")

routes = [
    Route("/v1/files.upload", upload, methods=["POST"]),
    Route("/v1/files.list", list_files, methods=["GET"]),
    Route("/v1/files.get/{file_id}", get, methods=["GET"]),
    Route("/v1/files.content/{file_id}", content, methods=["GET"]),
    Route("/v1/files.delete/{file_id}", delete, methods=["DELETE"]),
]

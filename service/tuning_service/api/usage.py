"""GET /v1/usage: the calling key's jobs, GPU time and limits (docs/api.md, "Quotas and priority")."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..schema.usage import KeyUsage
from . import params
from .auth import authenticate
from .context import jobs
from .operation import Json, operation


@operation(
    "getUsage",
    "The calling API key's usage and limits",
    tag="usage",
    ok=Json(KeyUsage, "Its running and queued jobs, GPU hours in the quota window, and limits"),
)
async def usage(request: Request) -> JSONResponse:
    owner = await authenticate(request)
    params.no_query(request)
    return JSONResponse(await jobs(request).usage(owner))


routes = [Route("/v1/usage", usage, methods=["GET"])]

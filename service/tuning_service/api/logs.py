"""GET /v1/tunings.logs/{id}: a JSON page of a job's records, or (follow=true) a live SSE stream."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .auth import authenticate
from .requests import check_query, query_bool, query_int, validate_job_id
from .sse import event_stream, parse_last_event_id

MAX_SEQ = 2**62


async def logs(request: Request) -> Response:
    owner = await authenticate(request)
    job_id = validate_job_id(request.path_params["job_id"])
    manager = request.app.state.manager
    params = request.query_params
    check_query(params, ("after", "limit", "follow"))
    after = query_int(params, "after", default=0, minimum=0, maximum=MAX_SEQ)
    limit = query_int(params, "limit", default=100, minimum=1, maximum=1000)
    if not query_bool(params, "follow"):
        records, has_more = await manager.events(job_id, owner=owner, after=after, limit=limit)
        last_seq = int(records[-1]["seq"]) if records else after
        return JSONResponse({"object": "list", "data": records, "has_more": has_more, "last_seq": last_seq})

    # Ownership is checked before the stream starts, so another key's job is a plain JSON 404.
    await manager.get(job_id, owner=owner)
    resume = parse_last_event_id(request.headers.get("last-event-id"))
    stream = event_stream(
        manager,
        job_id,
        owner=owner,
        after=resume if resume is not None else after,
        heartbeat_seconds=request.app.state.settings.heartbeat_seconds,
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            # nginx and friends buffer responses by default, which would hold events back.
            "X-Accel-Buffering": "no",
        },
    )


routes = [Route("/v1/tunings.logs/{job_id}", logs, methods=["GET"])]

"""GET /v1/tunings.logs/{id}: a JSON page of a job's records, or (follow=true) a live SSE stream."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..schema.jobs import LastEventId, LogEvent, LogPage, LogsQuery
from . import params
from .auth import authenticate
from .context import jobs, settings
from .jobs import JOB_ID
from .operation import Content, Header, operation
from .sse import event_stream


@operation(
    "getTuningLogs",
    "A job's records and log lines",
    tag="tunings",
    description="JSON pages by default. With `follow=true`: Server-Sent Events (`id` = record seq, `event` = "
    "record type, `data` = the record as one line of JSON), resumable with `Last-Event-ID`, `: heartbeat` "
    "comments during silence, ending after the terminal `status` record.",
    path={"job_id": JOB_ID},
    query=LogsQuery,
    headers=(Header("Last-Event-ID", LastEventId),),
    ok=Content(
        {"application/json": LogPage, "text/event-stream": LogEvent},
        "A page of records, or an event stream with follow=true",
    ),
    errors={404: ("job_not_found",)},
)
async def logs(request: Request) -> Response:
    owner = await authenticate(request)
    job_id = params.job_id(request)
    q = params.query(request, LogsQuery)
    resume = params.last_event_id(request)  # checked even without follow: a documented header
    records = await jobs(request).records(job_id, owner=owner)  # ownership: checked once, here
    if not q.follow:
        page, has_more = await records.page(after=q.after, limit=q.limit)
        last_seq = int(page[-1]["seq"]) if page else q.after
        return JSONResponse({"object": "list", "data": page, "has_more": has_more, "last_seq": last_seq})
    stream = event_stream(
        records,
        after=resume if resume is not None else q.after,
        heartbeat_seconds=settings(request).heartbeat_seconds,
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

"""B1's baseline: a bare Starlette app with one route returning a JSON dict, served by uvicorn with the same
settings as `python -m tuning_service` (one worker, no access log, the same log level and graceful-shutdown
timeout). The dict is the job object the service returns for the same request (read from
$BENCH_BARE_BODY), so both sides serialise the same payload and the ratio measures the service's own work.

    BENCH_BARE_BODY=job.json python -m uvicorn bare_app:app --app-dir scripts/bench --port P --no-access-log
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_BODY_FILE = os.environ.get("BENCH_BARE_BODY")
BODY = json.loads(Path(_BODY_FILE).read_text()) if _BODY_FILE else {"id": "x", "object": "tuning.job"}


async def get(request: Request) -> JSONResponse:
    return JSONResponse(BODY)


app = Starlette(routes=[Route("/v1/tunings.get/{job_id}", get, methods=["GET"])])

"""What a handler reaches through the app: the job facade, the file store and the settings, typed. Routes
talk to these and nothing else (never to the storage underneath)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

if TYPE_CHECKING:
    from ..engine.facade import JobManager
    from ..files.store import Files
    from ..settings import Settings


def jobs(request: Request) -> JobManager:
    return request.app.state.manager  # type: ignore[no-any-return]


def files(request: Request) -> Files:
    return request.app.state.manager.files  # type: ignore[no-any-return]


def settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]

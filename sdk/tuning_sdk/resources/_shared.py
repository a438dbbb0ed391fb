"""Helpers shared by the resources."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote


def _path_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"Expected a non-empty job id, got {job_id!r}")
    return quote(job_id, safe="")


def _dispose(resp: Any) -> None:
    """Give a streamed response's connection back. One not read to its end is closed first: returned to
    the pool with unread bytes, it would corrupt the next request sent over it."""
    try:
        if not resp.closed and resp.length_remaining != 0:
            resp.close()
    finally:
        resp.release_conn()

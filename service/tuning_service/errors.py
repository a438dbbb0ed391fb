"""The service's error type: every failure a client sees is one of these, rendered as
{"error": {"code", "message", "param", "type"}} with the given HTTP status."""

from __future__ import annotations

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "type": _TYPES.get(self.status_code, "api_error"),
        }
        err.update(self.extra)
        return {"error": err}


def job_not_found(job_id: str) -> APIError:
    # The same body whether the id is unknown or belongs to another key: nothing leaks between tenants.
    return APIError(404, "job_not_found", f"No job with id {job_id!r}", param="id")

"""The SDK's one error hierarchy.

    TuningError
    ├── APIConnectionError          the service could not be reached (or the connection dropped)
    │   └── APITimeoutError         ... because a connect/read timeout expired
    ├── APIStatusError              the service answered with an error status (4xx/5xx)
    │   ├── BadRequestError             400
    │   ├── AuthenticationError         401
    │   ├── PermissionDeniedError       403
    │   ├── NotFoundError               404
    │   ├── ConflictError               409
    │   ├── UnprocessableEntityError    422
    │   ├── RateLimitError              429 (retried)
    │   │   └── QuotaExceededError      429 quota_exceeded: over one of the key's quotas (never retried)
    │   └── InternalServerError         5xx
    └── WaitTimeoutError            tunings.wait(timeout=...) ran out before the job ended

Every error carries `status_code`, `code`, `message`, `param` and `request_id` (None where they do not apply),
so one `except TuningError as e:` can log all of them the same way. Status codes map to classes in exactly one
place: `make_status_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import TuningJob

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "TuningError",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "make_status_error",
    "make_stream_error",
]


class TuningError(Exception):
    """Base class of every error the SDK raises."""

    status_code: int | None = None
    code: str | None = None
    param: str | None = None
    request_id: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(TuningError):
    """The request never got an HTTP answer: connection refused, reset, dropped mid-response, DNS failure."""

    def __init__(self, message: str = "Connection error.", *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class APITimeoutError(APIConnectionError):
    """A connect or read timeout expired (see `TuningClient(timeout=...)`)."""

    def __init__(self, message: str = "Request timed out.", *, cause: BaseException | None = None) -> None:
        super().__init__(message, cause=cause)


class APIStatusError(TuningError):
    """The service answered with an error status. Subclasses name the common statuses.

    Attributes:
        status_code: the HTTP status.
        code: the machine-readable code from the error body (e.g. ``"invalid_hyperparameter"``).
        message: the human message from the error body.
        param: the offending field, dotted (e.g. ``"hyperparameters.learning_rate"``), when one is to blame.
        request_id: the ``X-Request-ID`` of the failed request; quote it when reporting a problem.
        body: the whole ``error`` object as sent (it may carry more, e.g. ``line`` for data-file errors).
        headers: the response headers.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.param = param
        self.request_id = request_id
        self.body: dict[str, Any] = dict(body or {})
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def line(self) -> int | None:
        """The 1-based line of the data file at fault, for data-file errors (422); else None."""
        line = self.body.get("line")
        return line if isinstance(line, int) else None

    def __str__(self) -> str:
        parts = [f"Error {self.status_code}"]
        if self.code:
            parts.append(f"[{self.code}]")
        text = " ".join(parts) + f": {self.message}"
        if self.param:
            text += f" (param: {self.param})"
        if self.request_id:
            text += f" (request id: {self.request_id})"
        return text


class BadRequestError(APIStatusError):
    """400: malformed request (not JSON, wrong types, a path outside the files root, a prompt longer than the
    model's context: ``context_length_exceeded``)."""


class AuthenticationError(APIStatusError):
    """401: missing or invalid API key."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this (e.g. a webhook address the server's policy refuses, deleting a base
    model: ``model_not_deletable``)."""


class NotFoundError(APIStatusError):
    """404: unknown id (or a job that belongs to another key; an unknown model: ``model_not_found``)."""


class ConflictError(APIStatusError):
    """409: the job (or key) is in the wrong state for the action: deleting a running job, an idempotency key
    already used with another body, a webhook without the key's signing secret."""


class UnprocessableEntityError(APIStatusError):
    """422: well-formed but invalid: hyperparameters, data-file content, an uploaded file that failed
    validation."""


class RateLimitError(APIStatusError):
    """429: too many requests; retried automatically, honouring ``Retry-After``."""


class QuotaExceededError(RateLimitError):
    """429 ``quota_exceeded``: the API key is over one of its quotas (queued jobs, GPU hours in the quota
    window). Unlike a rate limit it does not clear in seconds, so it is never retried: ``param`` names the
    limit (e.g. ``"max_gpu_hours"``), and ``client.usage.retrieve()`` shows the key's usage and limits."""


class InternalServerError(APIStatusError):
    """5xx: a fault on the service's side (e.g. 503 ``engine_crashed``, ``engine_unavailable``,
    ``no_gpu_available``); retried automatically, except inside a stream that has begun."""


class WaitTimeoutError(TuningError, TimeoutError):
    """`tunings.wait(timeout=...)` expired before the job reached a terminal status.

    The job keeps running on the service; `job` is the last state seen.
    """

    def __init__(self, message: str, *, job: TuningJob) -> None:
        super().__init__(message)
        self.job = job


# The 429 code of a quota (the rate limit's is ``rate_limited``).
QUOTA_EXCEEDED = "quota_exceeded"

_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def make_status_error(
    status_code: int, body: Any, headers: Mapping[str, str] | None = None
) -> APIStatusError:
    """Build the error for an HTTP error response: the one place where statuses map to classes.

    `body` is the decoded JSON body (or raw text, or None); the API's envelope is
    ``{"error": {"code", "message", "param", "type", ...}}``, but anything else still gives a useful error.
    """
    headers = dict(headers or {})
    request_id = _header(headers, "x-request-id")
    err: dict[str, Any] = {}
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        err = dict(body["error"])
    elif isinstance(body, Mapping) and "message" in body:
        err = dict(body)
    code = err.get("code") if isinstance(err.get("code"), str) else None
    param = err.get("param") if isinstance(err.get("param"), str) else None
    message = err.get("message")
    if not isinstance(message, str) or not message:
        text = body.strip() if isinstance(body, str) else ""
        message = text[:500] or f"HTTP {status_code} with no error message"
    if status_code >= 500:
        cls: type[APIStatusError] = InternalServerError
    elif status_code == 429 and code == QUOTA_EXCEEDED:
        cls = QuotaExceededError
    else:
        cls = _STATUS_CLASSES.get(status_code, APIStatusError)
    return cls(
        message,
        status_code=status_code,
        code=code,
        param=param,
        request_id=request_id,
        body=err,
        headers=headers,
    )


# The HTTP status an error sent inside an event stream (after the 200 went out) stands for, by its code; other
# codes go by the error's `type`, then 500.
STREAM_ERROR_STATUS: Mapping[str, int] = {
    "invalid_json": 400,
    "invalid_request": 400,
    "invalid_value": 400,
    "context_length_exceeded": 400,
    "model_not_found": 404,
    "rate_limited": 429,
    "internal_error": 500,
    "model_load_failed": 500,
    "generation_failed": 500,
    "engine_crashed": 503,
    "engine_unavailable": 503,
    "engine_overloaded": 503,
    "no_gpu_available": 503,
}
_TYPE_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "rate_limit_error": 429,
}


def make_stream_error(error: Any, headers: Mapping[str, str] | None = None) -> APIStatusError:
    """The error for ``data: {"error": {...}}`` inside an event stream: the class the same error would have
    had as an HTTP status (``engine_crashed`` is a 503: `InternalServerError`), through `make_status_error`.
    `headers` are the stream's response headers (its ``X-Request-ID``)."""
    err = dict(error) if isinstance(error, Mapping) else {"message": str(error)}
    status = err.get("status_code", err.get("status"))
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        code, kind = err.get("code"), err.get("type")
        status = STREAM_ERROR_STATUS.get(code) if isinstance(code, str) else None
        if status is None:
            status = _TYPE_STATUS.get(kind, 500) if isinstance(kind, str) else 500
    if not isinstance(err.get("message"), str) or not err["message"]:
        err["message"] = "the stream reported an error"
    return make_status_error(status, {"error": err}, headers)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


class WebhookSignatureError(TuningError):
    """A webhook's signature is missing, malformed, wrong, or too old to trust (a replay).

    Raised by `tuning_sdk.webhooks.verify_signature`; defined here so `import tuning_sdk` need not load the
    webhook helpers.
    """

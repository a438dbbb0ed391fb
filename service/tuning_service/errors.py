"""The service's error type and the one table of request problems.

Every failure a client sees is an `APIError`, rendered as {"error": {"code", "message", "param", "type"}}
(plus `line` for data-file problems) with its HTTP status. A request that does not fit its schema (schema/)
is one `Problem` (tuning_trainer.schema: the dotted field, a message naming it and its limit, and its kind),
and `PROBLEMS` below says what each kind becomes: the shape of a request (missing fields, wrong JSON types,
unknown names) is 400, a value of the right shape outside its limits is 422. docs/api.md, "Errors", shows
the table.
"""

from __future__ import annotations

from typing import Any

from tuning_trainer.schema import MISSING, TYPE, UNKNOWN_FIELD, VALUE, Problem

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


# ---- request problems ------------------------------------------------------------------------------------

BODY, QUERY, HEADER = "body", "query", "header"

# (where, field or "*" for any, kind or "*" for any) -> (status, code); the first matching row wins. A field
# row matches the field and everything under it ("method.type" matches itself only, "metadata" matches
# "metadata.team"); a row ending in "." matches the members of such an object wherever it is nested
# ("hyperparameters." matches "method.supervised.hyperparameters.n_epochs", not "hyperparameters").
PROBLEMS: tuple[tuple[str, str, str, int, str], ...] = (
    # Every hyperparameter problem has its own code, whatever its kind (the object itself being something
    # other than an object is a shape problem, below).
    (BODY, "hyperparameters.", "*", 422, "invalid_hyperparameter"),
    # A data path that breaks the path rules is refused like one that leaves the files root (files/paths.py),
    # and its value is not repeated: it may be a probe ("%2e%2e/etc/passwd").
    (BODY, "training_file", VALUE, 400, "invalid_path"),
    (BODY, "validation_file", VALUE, 400, "invalid_path"),
    # OpenAI-compatible create: what this service does not train or report.
    (BODY, "method.type", "*", 400, "unsupported_method"),
    (BODY, "*", MISSING, 400, "invalid_request"),
    (BODY, "*", TYPE, 400, "invalid_request"),
    (BODY, "*", UNKNOWN_FIELD, 400, "invalid_request"),
    (BODY, "*", VALUE, 422, "invalid_value"),
    # Query strings and headers: always the request's shape.
    (QUERY, "*", "*", 400, "invalid_request"),
    (HEADER, "*", "*", 400, "invalid_request"),
)


def _matches(pattern: str, param: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("."):
        return f".{pattern}" in f".{param}"
    return param == pattern or param.startswith(pattern + ".")


def problem_error(problem: Problem, where: str = BODY) -> APIError:
    """The APIError for a request problem, by the table."""
    param = problem.param or ""
    for place, field, kind, status, code in PROBLEMS:
        if place == where and (kind == "*" or kind == problem.kind) and _matches(field, param):
            message = problem.quiet if code == "invalid_path" and problem.quiet else problem.message
            return APIError(status, code, message, param=problem.param)
    raise AssertionError(f"no row of PROBLEMS for {where} {problem}")  # the table ends with catch-alls


def job_not_found(job_id: str) -> APIError:
    # The same body whether the id is unknown or belongs to another key: nothing leaks between tenants.
    return APIError(404, "job_not_found", f"No job with id {job_id!r}", param="id")

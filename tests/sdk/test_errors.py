"""Status codes map to the right classes, in one place, with every field filled."""

from __future__ import annotations

import pytest

from tuning_sdk import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    TuningError,
    UnprocessableEntityError,
)
from tuning_sdk._errors import make_status_error


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (413, APIStatusError),
        (418, APIStatusError),
    ],
)
def test_status_maps_to_class(status: int, cls: type[APIStatusError]) -> None:
    body = {"error": {"code": "c", "message": "m", "param": "p", "type": "t"}}
    err = make_status_error(status, body, {"X-Request-ID": "req-1"})
    assert type(err) is cls
    assert isinstance(err, TuningError)
    assert (err.status_code, err.code, err.message, err.param, err.request_id) == (
        status,
        "c",
        "m",
        "p",
        "req-1",
    )
    assert "m" in str(err) and "req-1" in str(err) and str(status) in str(err)


def test_data_file_error_keeps_line_and_extra_fields() -> None:
    body = {
        "error": {
            "code": "invalid_json",
            "message": "line 3 is not valid JSON",
            "param": "training_file",
            "line": 3,
            "type": "invalid_request_error",
        }
    }
    err = make_status_error(422, body, {})
    assert isinstance(err, UnprocessableEntityError)
    assert err.line == 3 and err.param == "training_file" and err.body["type"] == "invalid_request_error"
    assert err.request_id is None


def test_non_json_and_empty_bodies_still_give_a_message() -> None:
    err = make_status_error(502, "<html>Bad Gateway</html>", {})
    assert isinstance(err, InternalServerError) and "Bad Gateway" in err.message and err.code is None
    err = make_status_error(500, None, {})
    assert err.message == "HTTP 500 with no error message"


def test_hierarchy() -> None:
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APIConnectionError, TuningError)
    assert not issubclass(APIConnectionError, APIStatusError)
    err = APIConnectionError("down")
    assert err.status_code is None and err.code is None and err.request_id is None and err.param is None


def test_errors_inside_a_stream_map_as_their_http_status_would() -> None:
    """An error the service sends inside a completion stream (its 200 already went out) carries no status:
    the SDK maps its code to the status the generation routes answer it with (the service's own table), so
    it raises the class the same error would have had before the stream began."""
    from tuning_sdk._errors import make_stream_error
    from tuning_service.inference.routes import GENERATE_ERRORS

    for status, codes in GENERATE_ERRORS.items():
        for code in codes:
            err = make_stream_error({"code": code, "message": "m", "param": None, "type": "api_error"})
            assert err.status_code == status and err.code == code, code
            assert type(err) is type(make_status_error(status, {}))
    err = make_stream_error({"code": "engine_crashed", "message": "died"}, {"X-Request-ID": "req-9"})
    assert isinstance(err, InternalServerError) and err.status_code == 503 and err.request_id == "req-9"
    # Whatever else a server sends there still gives an error with a message.
    assert make_stream_error("boom").message == "boom" and make_stream_error("boom").status_code == 500
    assert make_stream_error({}).message == "the stream reported an error"
    assert make_stream_error({"message": "x", "type": "not_found_error"}).status_code == 404


def test_a_quota_is_its_own_rate_limit_error() -> None:
    """429 `quota_exceeded` (a key over its quota: it will not clear in seconds) is a QuotaExceededError, a
    RateLimitError still; any other 429 stays a plain RateLimitError."""
    body = {"error": {"code": "quota_exceeded", "message": "over", "param": "max_gpu_hours", "type": "x"}}
    err = make_status_error(429, body, {"X-Request-ID": "req-q"})
    assert type(err) is QuotaExceededError and isinstance(err, RateLimitError)
    assert (err.status_code, err.code, err.param, err.request_id) == (
        429,
        "quota_exceeded",
        "max_gpu_hours",
        "req-q",
    )
    rate = {"error": {"code": "rate_limited", "message": "slow down", "param": None, "type": "x"}}
    assert type(make_status_error(429, rate)) is RateLimitError
    assert type(make_status_error(429, None)) is RateLimitError
    # The code is only a quota's on a 429.
    assert type(make_status_error(400, body)) is BadRequestError

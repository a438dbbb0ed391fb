"""Limits (issue 5, point 10): JSONL line/size/row limits, non-UTF-8, hyperparameters out of range -> 422
naming the field or line; the per-key rate limit -> 429 with Retry-After while other keys are unaffected.
(Oversized request bodies -> 413 before they are read: tests/service/api/test_validation.py and
tests/service/api/test_middleware.py.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.support.server import DEV_KEY, OTHER_KEY, TINY_TRAIN_ROWS, ServiceEnv, ServiceProcess, write_jsonl
from tuning_service.api.ratelimit import RateLimiter
from tuning_service.errors import APIError

ROW = json.dumps(TINY_TRAIN_ROWS[0])


@pytest.fixture(scope="module")
def limited(light_service_env: ServiceEnv) -> Iterator[ServiceProcess]:
    root = light_service_env.files_root / "limits"
    write_jsonl(root / "ok.jsonl", TINY_TRAIN_ROWS[:3])
    (root / "long_line.jsonl").write_text(
        f"{ROW}\n{ROW}\n" + json.dumps({"prompt": "x" * 400, "completion": "y"}) + "\n"
    )
    write_jsonl(root / "many_rows.jsonl", TINY_TRAIN_ROWS[:6])
    (root / "big.jsonl").write_text((ROW + "\n") * 40)
    latin1 = '{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1")
    (root / "latin1.jsonl").write_bytes(ROW.encode() + b"\n" + latin1)
    svc = light_service_env.start(
        "limits",
        extra_env={
            "TUNING_MAX_CONCURRENT_JOBS": "0",
            "TUNING_MAX_LINE_BYTES": "300",
            "TUNING_MAX_ROWS": "5",
            "TUNING_MAX_FILE_BYTES": "2000",
        },
    )
    yield svc
    svc.shutdown()


@pytest.fixture(scope="module")
def rate_limited(light_service_env: ServiceEnv) -> Iterator[ServiceProcess]:
    svc = light_service_env.start(
        "ratelimit",
        extra_env={
            "TUNING_MAX_CONCURRENT_JOBS": "0",
            "TUNING_RATE_LIMIT_RPS": "2",
            "TUNING_RATE_LIMIT_BURST": "4",
        },
    )
    yield svc
    svc.shutdown()


def create(svc: ServiceProcess, key: str = DEV_KEY, **body: object):
    body.setdefault("model", "tiny-llama")
    return svc.post("/v1/tunings.create", body, key=key)


@pytest.mark.parametrize(
    ("path", "code", "line"),
    [
        ("limits/long_line.jsonl", "line_too_long", 3),
        ("limits/many_rows.jsonl", "too_many_rows", 6),
        ("limits/big.jsonl", "file_too_large", None),
        ("limits/latin1.jsonl", "invalid_encoding", 2),
    ],
)
def test_data_file_limits_are_422_naming_the_line(
    limited: ServiceProcess, path: str, code: str, line: int | None
) -> None:
    r = create(limited, key=OTHER_KEY, training_file=path)
    assert r.status == 422, r.text
    err = r.error
    assert (err["code"], err["param"], err["line"]) == (code, "training_file", line)
    assert str(limited.files_root) not in r.text  # no server path echoed


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"epochs": -1}', "hyperparameters.epochs"),
        (b'{"learning_rate": NaN}', "hyperparameters.learning_rate"),
        (b'{"learning_rate": Infinity}', "hyperparameters.learning_rate"),
        (b'{"batch_size": 0}', "hyperparameters.batch_size"),
        (b'{"lora_dropout": 1.0}', "hyperparameters.lora_dropout"),
    ],
)
def test_hyperparameters_out_of_range_are_422_naming_the_field(
    limited: ServiceProcess, body: bytes, param: str
) -> None:
    raw = b'{"model": "tiny-llama", "training_file": "limits/ok.jsonl", "hyperparameters": ' + body + b"}"
    r = limited.request(
        "POST", "/v1/tunings.create", body=raw, headers={"Content-Type": "application/json"}, key=OTHER_KEY
    )
    assert r.status == 422, r.text
    assert (r.error["code"], r.error["param"]) == ("invalid_hyperparameter", param)


def test_rate_limit_is_per_key_with_retry_after(rate_limited: ServiceProcess) -> None:
    limited = rate_limited
    fresh = limited.new_key("rate-probe")
    codes = [limited.get("/v1/tunings.list", key=fresh).status for _ in range(8)]
    assert codes[:4] == [200] * 4 and 429 in codes[4:], codes
    r = limited.get("/v1/tunings.list", key=fresh)
    assert r.status == 429 and r.error["code"] == "rate_limited" and r.error["type"] == "rate_limit_error"
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= 2
    # Another key is not slowed down by the first one's burst.
    assert limited.get("/v1/tunings.list", key=DEV_KEY).status == 200
    # Waiting Retry-After is enough.
    time.sleep(retry_after)
    assert limited.get("/v1/tunings.list", key=fresh).status == 200
    # Unauthenticated and public routes are not counted against anyone.
    assert limited.get("/health", key=None).status == 200


def test_token_bucket_refills_at_the_rate() -> None:
    now = [0.0]
    rl = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [rl.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.acquire("a") == pytest.approx(0.5)
    assert rl.acquire("b") == 0.0  # own bucket
    now[0] += 0.5
    assert rl.acquire("a") == 0.0
    now[0] += 100
    assert [rl.acquire("a") for _ in range(4)][-1] > 0  # refills up to the burst, not beyond
    with pytest.raises(APIError) as info:
        rl.check("a")
    assert info.value.status_code == 429 and info.value.headers["Retry-After"] == "1"
    off = RateLimiter(0, 0)
    assert not off.enabled and all(off.acquire("a") == 0.0 for _ in range(1000))

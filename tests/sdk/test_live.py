"""The SDK, the CLI and the examples against the real service (uvicorn subprocess, real tiny-model training).

Jobs that train share the session's `live_service`; each test that counts jobs uses its own fresh API key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.server import DEV_KEY, ServiceProcess
from tuning_sdk import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    Hyperparameters,
    NotFoundError,
    TuningClient,
    TuningJob,
    UnprocessableEntityError,
)

REPO = Path(__file__).resolve().parents[2]
# Upper bounds only: a quiet 2-core machine trains the tiny model at thousands of tokens/s and each test takes
# seconds, but a machine shared with other test runs can be a hundred times slower.
SLOW = 900
pytestmark = pytest.mark.timeout(1500)
TERMINAL = {"succeeded", "failed", "cancelled"}

# The original spec's test_sdk.py, verbatim but for the base URL and (where noted) the model.
SPEC_TEST_SDK = """
from tuning_sdk import TuningClient
import time

# 初始化客戶端
client = TuningClient(
    api_key="test-key-001",
    base_url="http://localhost:8000"
)

# 檢查服務健康狀態
health = client.health_check()
print(f"服務狀態: {health['status']}")

# 創建訓練任務
job = client.tunings.create(
    model="meta-llama/Llama-2-7b-hf",
    training_file="data/train.jsonl",
    hyperparameters={
        "epochs": 3,
        "learning_rate": 0.0002
    }
)
print(f"任務已創建: {job.id}")

# 等待訓練完成（帶進度顯示）
def show_progress(j):
    if j.metrics:
        print(f"進度: {j.metrics.progress * 100:.1f}% | "
              f"Epoch {j.metrics.current_epoch}/{j.metrics.total_epochs} | "
              f"Loss: {j.metrics.train_loss:.4f}")

final_job = client.tunings.wait(job.id, on_progress=show_progress)

# 顯示結果
if final_job.is_successful:
    print(f"\\n訓練成功！")
    print(f"微調模型: {final_job.fine_tuned_model}")
    print(f"訓練時長: {final_job.duration}秒")
else:
    print(f"\\n訓練失敗: {final_job.error}")

client.close()
"""


def run_spec_script(
    svc: ServiceProcess, tmp_path: Path, model: str | None
) -> subprocess.CompletedProcess[str]:
    script = SPEC_TEST_SDK.replace("http://localhost:8000", svc.base_url)
    if model is not None:
        script = script.replace("meta-llama/Llama-2-7b-hf", model)
    path = tmp_path / "test_sdk.py"
    path.write_text(script, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=SLOW, cwd=tmp_path
    )


@pytest.fixture
def sdk(live_service: ServiceProcess):
    with TuningClient(api_key=DEV_KEY, base_url=live_service.base_url) as client:
        yield client


@pytest.fixture
def fresh_client(live_service: ServiceProcess):
    """A client with a brand-new key: it sees only the jobs it creates."""
    with TuningClient(api_key=live_service.new_key("sdk-tests"), base_url=live_service.base_url) as client:
        yield client


def test_spec_test_sdk_script_on_the_tiny_model(live_service: ServiceProcess, tmp_path: Path) -> None:
    result = run_spec_script(live_service, tmp_path, "tiny-llama")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "服務狀態: healthy" in out
    assert "任務已創建: ftjob-" in out
    progress = [line for line in out.splitlines() if line.startswith("進度: ")]
    assert progress, out
    assert progress[-1].startswith("進度: 100.0% | Epoch 3/3 | Loss: ")
    assert "訓練成功！" in out and "微調模型: ft:tiny-llama:" in out and "訓練時長: " in out


def test_spec_test_sdk_script_literally_fails_cleanly(live_service: ServiceProcess, tmp_path: Path) -> None:
    # The hub model cannot be downloaded here (offline, no GPU): the job fails, the script reports why.
    result = run_spec_script(live_service, tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    failure = [line for line in result.stdout.splitlines() if line.startswith("訓練失敗: ")]
    assert failure, result.stdout
    assert "meta-llama/Llama-2-7b-hf" in failure[0] or "model" in failure[0].lower()


def test_wait_with_progress_on_a_real_job(sdk: TuningClient) -> None:
    job = sdk.tunings.create(
        model="tiny-llama",
        training_file="data/train.jsonl",
        hyperparameters=Hyperparameters(
            epochs=1, learning_rate=5e-4, batch_size=8, max_steps=12, eval_steps=6
        ),
        validation_file="data/valid.jsonl",
        method="lora",
        suffix="sdk",
        seed=7,
        metadata={"suite": "sdk"},
    )
    assert job.status in ("validating", "queued") and job.metadata == {"suite": "sdk"}
    seen: list[TuningJob] = []
    final = sdk.tunings.wait(job.id, on_progress=seen.append, timeout=SLOW)
    assert final.is_successful, final.error
    assert final.fine_tuned_model == f"ft:tiny-llama:sdk:{job.id}"
    assert final.adapter_path and final.duration and final.duration > 0
    assert final.hyperparameters.epochs == 1 and final.hyperparameters.batch_size == 8
    assert seen and all(j.metrics is not None and j.metrics.train_loss is not None for j in seen)
    progress = [j.metrics.progress for j in seen if j.metrics]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert final.metrics is not None and final.metrics.eval_loss is not None

    # Its records, all of them, in order; the follow stream of an ended job gives the same.
    records = list(sdk.tunings.stream_logs(job.id, follow=False))
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    types = {r.type for r in records}
    assert {"status", "started", "metrics", "completed"} <= types
    assert records[-1].is_terminal_status
    assert [r.seq for r in sdk.tunings.stream_logs(job.id)] == [r.seq for r in records]
    assert next(r.seq for r in sdk.tunings.stream_logs(job.id, after=5, follow=False)) == 6


def test_list_pagination_cancel_delete(live_service: ServiceProcess, fresh_client: TuningClient) -> None:
    c = fresh_client
    created = [
        c.tunings.create(model="tiny-llama", training_file="data/train.jsonl", hyperparameters={"epochs": 5})
        for _ in range(5)
    ]
    try:
        page = c.tunings.list(limit=2)
        assert len(page.data) == 2 and page.has_more
        assert [len(p.data) for p in page.iter_pages()] == [2, 2, 1]
        assert [j.id for j in page] == [j.id for j in reversed(created)]  # newest first, across pages

        # A job that has not ended cannot be deleted.
        with pytest.raises(ConflictError) as info:
            c.tunings.delete(created[0].id)
        assert info.value.code == "job_not_terminal" and info.value.request_id
    finally:
        for job in created:
            try:
                c.tunings.cancel(job.id)
            except ConflictError:
                pass  # it ended first
    ended = [c.tunings.wait(j.id, timeout=SLOW) for j in created]
    assert all(j.status in TERMINAL for j in ended)
    assert {j.id for j in c.tunings.list(status="cancelled")} == {
        j.id for j in ended if j.status == "cancelled"
    }
    with pytest.raises(ConflictError) as info:
        c.tunings.cancel(created[0].id)
    assert info.value.code == "job_terminal"
    for job in created:
        assert c.tunings.delete(job.id).deleted
    with pytest.raises(NotFoundError):
        c.tunings.get(created[0].id)
    assert list(c.tunings.list()) == []


def test_errors_map_to_classes(live_service: ServiceProcess, sdk: TuningClient) -> None:
    with pytest.raises(NotFoundError) as nf:
        sdk.tunings.get("ftjob-0000")
    assert nf.value.code == "job_not_found" and nf.value.status_code == 404 and nf.value.request_id
    with pytest.raises(UnprocessableEntityError) as bad_hp:
        sdk.tunings.create(
            model="tiny-llama", training_file="data/train.jsonl", hyperparameters={"learning_rate": -1.0}
        )
    assert bad_hp.value.param == "hyperparameters.learning_rate"
    with pytest.raises(BadRequestError) as bad_path:
        sdk.tunings.create(model="tiny-llama", training_file="../../etc/passwd")
    assert bad_path.value.code == "invalid_path" and "/etc" not in bad_path.value.message
    bad = TuningClient(api_key="wrong-key", base_url=live_service.base_url)
    with pytest.raises(AuthenticationError) as auth:
        bad.tunings.list()
    assert auth.value.code == "invalid_api_key"
    # Another key's job is invisible: the same 404.
    other = TuningClient(api_key=live_service.new_key("other"), base_url=live_service.base_url)
    job = sdk.tunings.create(
        model="tiny-llama", training_file="data/train.jsonl", hyperparameters={"epochs": 1}
    )
    with pytest.raises(NotFoundError):
        other.tunings.get(job.id)
    other.close()
    # The same idempotency key: the same job; with another body: 409.
    again = sdk.tunings.create(
        model="tiny-llama",
        training_file="data/train.jsonl",
        hyperparameters={"epochs": 1},
        idempotency_key="k-1",
    )
    assert (
        sdk.tunings.create(
            model="tiny-llama",
            training_file="data/train.jsonl",
            hyperparameters={"epochs": 1},
            idempotency_key="k-1",
        ).id
        == again.id
    )
    with pytest.raises(ConflictError) as reused:
        sdk.tunings.create(model="tiny-llama", training_file="data/train.jsonl", idempotency_key="k-1")
    assert reused.value.code == "idempotency_key_reused"
    for j in (job, again):
        try:
            sdk.tunings.cancel(j.id)
        except ConflictError:
            pass


def test_stream_logs_resumes_across_a_server_restart(service_env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="tuning_sdk")
    svc = service_env.start("sdk-restart")
    try:
        with TuningClient(api_key=DEV_KEY, base_url=svc.base_url) as c:
            # Long enough to outlast the restart (the tiny model trains ~100 steps/s): a job that ends while
            # the old service drains its streams would end this stream normally, with nothing to resume.
            job = c.tunings.create(
                model="tiny-llama",
                training_file="data/train.jsonl",
                hyperparameters={"max_steps": 1500, "logging_steps": 25},
            )
            seqs: list[int] = []
            restarted = threading.Event()
            for rec in c.tunings.stream_logs(job.id):
                seqs.append(rec.seq)
                if len(seqs) == 3 and not restarted.is_set():
                    restarted.set()
                    svc.restart()  # the live connection drops; the SDK reconnects with Last-Event-ID
            assert restarted.is_set()
            # The old connection really died and the SDK resumed it (it logs each resumption).
            # (If the job ended while the service was down, the SDK reads the rest as a page instead.)
            assert any(
                "resuming after seq" in r.getMessage() or "reading the records after seq" in r.getMessage()
                for r in caplog.records
            )
            assert seqs == list(range(1, len(seqs) + 1)), seqs  # nothing repeated, nothing lost
            full = [r.seq for r in c.tunings.stream_logs(job.id, follow=False)]
            assert seqs == full
            assert c.tunings.get(job.id).is_terminal
    finally:
        svc.stop()


def _env(svc: ServiceProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNING_")}
    env.update(TUNING_BASE_URL=svc.base_url, TUNING_API_KEY=DEV_KEY, PYTHONUNBUFFERED="1")
    return env


def test_cli_create_wait_logs(live_service: ServiceProcess) -> None:
    tuning = [sys.executable, "-m", "tuning_sdk.cli"]
    out = subprocess.run(
        [
            *tuning,
            "--json",
            "jobs",
            "create",
            "--model",
            "tiny-llama",
            "--training-file",
            "data/train.jsonl",
            "--hp",
            "max_steps=10",
            "--hp",
            "batch_size=8",
            "--wait",
        ],
        capture_output=True,
        text=True,
        timeout=SLOW,
        env=_env(live_service),
    )
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["hyperparameters"]["batch_size"] == 8
    assert "100%" in out.stderr or "100.0%" in out.stderr  # the progress bar went to stderr
    logs = subprocess.run(
        [*tuning, "jobs", "logs", job["id"]],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(live_service),
    )
    assert logs.returncode == 0 and "status: succeeded" in logs.stdout
    missing = subprocess.run(
        [*tuning, "jobs", "get", "ftjob-nope"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(live_service),
    )
    assert missing.returncode == 5 and "job_not_found" in missing.stderr


def test_rate_limit_is_retried_after_retry_after(light_service_env) -> None:
    # A real 429 from the service's token bucket: the SDK waits Retry-After and succeeds; without retries
    # the error surfaces as RateLimitError.
    from tuning_sdk import RateLimitError
    from tuning_sdk._http import parse_retry_after

    svc = light_service_env.start(
        "sdk-ratelimit", extra_env={"TUNING_RATE_LIMIT_RPS": "1", "TUNING_RATE_LIMIT_BURST": "1"}
    )
    try:
        with TuningClient(api_key=DEV_KEY, base_url=svc.base_url, max_retries=0) as impatient:
            impatient.tunings.list()
            with pytest.raises(RateLimitError) as info:
                impatient.tunings.list()
            assert info.value.code == "rate_limited" and info.value.status_code == 429
            assert (parse_retry_after(info.value.headers) or 0) >= 1
        time.sleep(1.1)
        with TuningClient(api_key=DEV_KEY, base_url=svc.base_url, max_retries=3) as patient:
            t0 = time.monotonic()
            for _ in range(3):
                assert patient.tunings.list().data == []
            assert time.monotonic() - t0 >= 1.0  # it did wait for tokens rather than fail
    finally:
        svc.stop()


def test_trying_a_fine_tune_chat_completions_models_and_the_cli(live_service: ServiceProcess) -> None:
    """A fine-tune trained here, then tried through the SDK and `tuning chat` against the real inference
    worker: the typed objects are the service's own (validated with its schema), a stream joins to the whole
    answer, echo + logprobs scores a text, a stream closed early leaves the client usable, errors map."""
    from tests.sdk.objects import validate
    from tuning_sdk import ChatCompletion, ChatCompletionChunk, Completion, PermissionDeniedError, Stream
    from tuning_service.schema import inference as documented

    sdk = TuningClient(api_key=DEV_KEY, base_url=live_service.base_url, timeout=300)
    job = sdk.tunings.create(
        model="tiny-llama",
        training_file="data/train.jsonl",
        hyperparameters={"epochs": 1, "batch_size": 8, "max_steps": 4},
        method="lora",
        suffix="chat",
    )
    final = sdk.tunings.wait(job.id, timeout=SLOW)
    assert final.is_successful and final.fine_tuned_model, final.error

    # Models: the base and the fine-tune, found by the native job's name too.
    listed = {m.id: m for m in sdk.models.list()}
    assert listed["tiny-llama"].owned_by == "system" and listed["tiny-llama"].parent is None
    tuned = sdk.models.retrieve(final.fine_tuned_model)
    assert tuned.parent == "tiny-llama" and tuned.job_id == job.id and tuned.id in listed
    with pytest.raises(PermissionDeniedError) as denied:
        sdk.models.delete("tiny-llama")
    assert denied.value.code == "model_not_deletable"

    # Chat: whole, then streamed (the same text at temperature 0), with the service's own shapes.
    messages = [{"role": "user", "content": "What does the cow say?"}]
    whole = sdk.chat.completions.create(model=tuned.id, messages=messages, temperature=0, max_tokens=12)
    assert isinstance(whole, ChatCompletion) and whole.model == tuned.id
    validate(documented.ChatCompletion, whole.to_dict())
    assert whole.usage.completion_tokens > 0 and whole.choices[0].finish_reason in ("stop", "length")
    with sdk.chat.completions.create(
        model=tuned.id,
        messages=messages,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    for c in chunks:
        validate(documented.ChatCompletionChunk, c.to_dict())
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].usage is not None and chunks[-1].usage == whole.usage

    # Scoring a text: echo + logprobs, nothing generated.
    text = "The cow says moo."
    scored = sdk.completions.create(model="tiny-llama", prompt=text, max_tokens=0, echo=True, logprobs=1)
    assert isinstance(scored, Completion) and scored.text == text
    validate(documented.Completion, scored.to_dict())
    lp = scored.choices[0].logprobs
    assert lp is not None and scored.usage is not None and len(lp.tokens) == scored.usage.prompt_tokens
    assert lp.token_logprobs[0] is None and all(x is not None and x <= 0 for x in lp.token_logprobs[1:])

    # A stream closed after its first chunks: the next request goes through.
    s: Stream[ChatCompletionChunk] = sdk.chat.completions.create(
        model="tiny-llama", messages=messages, max_tokens=200, stream=True
    )
    next(s), next(s)
    s.close()
    assert s.closed
    again = sdk.completions.create(model="tiny-llama", prompt="Hello", max_tokens=2, temperature=0)
    assert again.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(BadRequestError) as too_long:
        sdk.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "moo " * 3000}])
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(NotFoundError):
        sdk.chat.completions.create(model="ft:tiny-llama:nobody:x:ftjob-nope", messages=messages)

    # The CLI: base and tuned side by side, and a conversation read from stdin.
    tuning = [sys.executable, "-m", "tuning_sdk.cli"]
    args = ["--temperature", "0", "--max-tokens", "12"]
    out = subprocess.run(
        [
            *tuning,
            "chat",
            final.fine_tuned_model,
            "--prompt",
            "What does the cow say?",
            "--compare-base",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=SLOW,
        env=_env(live_service),
    )
    assert out.returncode == 0, out.stderr
    base_part, tuned_part = out.stdout.split(f"── tuned ({final.fine_tuned_model}) ──\n")
    assert base_part.startswith("── base (tiny-llama) ──\n")
    assert tuned_part == whole.text + "\n"  # the same answer as the SDK's, streamed, then a newline
    out = subprocess.run(
        [*tuning, "chat", "tiny-llama", *args],
        input="Hello\nWhat does the cow say?\n/exit\n",
        capture_output=True,
        text=True,
        timeout=SLOW,
        env=_env(live_service),
    )
    assert out.returncode == 0 and out.stdout.count("\n") >= 2, out.stderr

    deleted = sdk.models.delete(tuned.id)
    assert deleted.deleted and deleted.id == tuned.id
    with pytest.raises(NotFoundError):
        sdk.models.retrieve(tuned.id)
    sdk.close()

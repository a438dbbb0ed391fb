"""The job page's "Try it" pane in a real headless Chromium against a real service that trains the tiny model
and serves it (the inference worker, base model and the job's adapter).

One short training job (enough steps that the fine-tune answers differently from its base): the pane is
hidden while the job trains and appears once it succeeded; a prompt sent with Ctrl+Enter streams both
answers side by side, and each column's text is exactly what the non-streamed API answers for its model at
temperature 0 (so the page's SSE parsing over fetch() is right); Stop aborts both and keeps what arrived;
the server's errors (400 context_length_exceeded, 404 for a deleted fine-tune) and an error inside the
stream are shown in the column with their message and code; the pane is absent on a job that did not
succeed. Screenshots at laptop and phone widths.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import LAPTOP, PHONE, Screenshots, browser_missing
from tests.browser.test_dashboard import by_id, css, sign_in, status_text, visible, wait
from tests.support.server import DEV_KEY, ServiceEnv, ServiceProcess

_MISSING = browser_missing()
pytestmark = [
    pytest.mark.skipif(_MISSING is not None, reason=f"browser tests need Chromium: {_MISSING}"),
    pytest.mark.slow,
]

# A few seconds of training on 2 cores; at this learning rate the fine-tune's greedy answers differ from
# its base model's (checked below: otherwise a column could show the wrong model and still pass).
TRAIN = {
    "epochs": 1,
    "batch_size": 2,
    "max_seq_length": 64,
    "max_steps": 20,
    "learning_rate": 0.002,
    "logging_steps": 5,
}
PROMPT = "What is 3 plus 4?"
SYSTEM = "You are a short and exact assistant."
COLUMNS = ("try-base", "try-tuned")
FINISHED = {"done", "stopped", "error"}


@pytest.fixture(scope="module")
def svc(service_env: ServiceEnv) -> Iterator[ServiceProcess]:
    s = service_env.start("try-it")
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def job(svc: ServiceProcess) -> dict[str, Any]:
    """The module's training job, submitted before the browser starts so that they overlap."""
    return svc.create_job(
        model="tiny-llama",
        method="sft",
        adapter="lora",
        training_file="data/train.jsonl",
        hyperparameters=TRAIN,
    )


def chat(svc: ServiceProcess, model: str, messages: list[dict[str, str]], max_tokens: int = 128) -> Any:
    """The non-streamed answer (or error) of POST /v1/chat/completions at temperature 0."""
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    return svc.post("/v1/chat/completions", body, timeout=120)


def answer(response: Any) -> str:
    assert response.status == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def messages(system: str | None = SYSTEM, prompt: str = PROMPT) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def column_state(browser: Any, column: str) -> str:
    return str(by_id(browser, column).get_attribute("data-state"))


def column_text(browser: Any, column: str) -> str:
    """The answer exactly as the page holds it (textContent: no whitespace normalised away)."""
    return str(css(browser, f"#{column} [data-part='text']")[0].get_property("textContent"))


def column_error(browser: Any, column: str) -> str:
    return str(css(browser, f"#{column} [data-part='error']")[0].text)


def both_finished(browser: Any) -> bool:
    return all(column_state(browser, c) in FINISHED for c in COLUMNS)


def set_field(browser: Any, element_id: str, value: str) -> None:
    field = by_id(browser, element_id)
    field.clear()
    if value:
        field.send_keys(value)


def open_job(browser: Any, svc: ServiceProcess, job_id: str) -> None:
    """A fresh load of the job's page (a pane left by the test before does not carry over)."""
    browser.get("about:blank")
    browser.get(svc.base_url + f"/ui/#/jobs/{job_id}")
    if visible(browser, "view-signin"):  # a fresh browser: sign in first (the job's page follows)
        sign_in(browser, DEV_KEY)
    wait(browser, lambda: visible(browser, "view-job"), what="the job's page")
    wait(browser, lambda: by_id(browser, "job-title").text == job_id, what="the job's title")


PANE_AND_STATUS = """
return [document.getElementById("try-it").hidden, document.getElementById("job-status").textContent];
"""


# Records each change of the Send and Stop buttons' `disabled` (in window.tryItButtons).
WATCH_BUTTONS = """
window.tryItButtons = [];
const watch = new MutationObserver((records) => {
  for (const r of records) window.tryItButtons.push([r.target.id, r.target.disabled]);
});
for (const id of ["try-send", "try-stop"]) {
  watch.observe(document.getElementById(id), { attributes: true, attributeFilter: ["disabled"] });
}
"""


def send_with_ctrl_enter(browser: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    by_id(browser, "try-prompt").send_keys(Keys.CONTROL, Keys.ENTER)


@pytest.mark.timeout(600)
def test_both_answers_stream_side_by_side_and_match_the_api(
    browser: Any, svc: ServiceProcess, job: dict[str, Any], screenshots: Screenshots
) -> None:
    job_id = job["id"]
    open_job(browser, svc, job_id)
    # While it is not succeeded (queued, running) there is nothing to try: the pane is hidden. The pane and
    # the status are read together (one script), so a page updating between two reads cannot fool this.
    seen = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        hidden, status = browser.execute_script(PANE_AND_STATUS)
        seen.add(status)
        assert hidden == (status != "succeeded"), (hidden, status)
        if status == "succeeded":
            break
        time.sleep(0.1)
    assert status_text(browser) == "succeeded", seen
    done = svc.get(f"/v1/tunings.get/{job_id}").json()
    assert done["fine_tuned_model"], done
    wait(browser, lambda: visible(browser, "try-it"), what="the Try it pane, once succeeded")

    # The two columns name their models; their answers are live regions; the inputs are labelled.
    base_model, tuned_model = done["model"], done["fine_tuned_model"]
    assert by_id(browser, "try-base-title").text == f"Base ({base_model})"
    assert by_id(browser, "try-tuned-title").text == f"Tuned ({tuned_model})"
    for column in COLUMNS:
        live = css(browser, f"#{column} [data-part='text']")[0]
        assert live.get_attribute("aria-live") == "polite"
    for field in ("try-system", "try-prompt", "try-temperature", "try-max-tokens"):
        assert css(browser, f'label[for="{field}"]'), field
    assert by_id(browser, "try-temperature").get_attribute("value") == "0"
    assert by_id(browser, "try-max-tokens").get_attribute("value") == "128"
    assert by_id(browser, "try-stop").get_attribute("disabled") is not None

    # What the API answers, not streamed: the reference. The fine-tune must differ from its base, so that a
    # column showing the other model's answer cannot pass.
    expected = {}
    for column, model in (("try-base", base_model), ("try-tuned", tuned_model)):
        expected[column] = answer(chat(svc, model, messages()))
    assert expected["try-base"] != expected["try-tuned"], expected
    assert all(expected.values()), expected

    set_field(browser, "try-system", SYSTEM)
    set_field(browser, "try-prompt", PROMPT)
    browser.execute_script(WATCH_BUTTONS)
    send_with_ctrl_enter(browser)
    wait(browser, lambda: both_finished(browser), timeout=120, what="both answers finished")
    # Send was disabled (and Stop enabled) while they generated, and only then: a warm worker answers the
    # tiny model in a blink, so the page recorded each change as it happened.
    changes = browser.execute_script("return window.tryItButtons")
    assert changes == [["try-send", True], ["try-stop", False], ["try-send", False], ["try-stop", True]]
    for column in COLUMNS:
        assert column_state(browser, column) == "done", (column, column_error(browser, column))
        assert column_text(browser, column) == expected[column], column
        assert column_error(browser, column) == ""
        state_line = css(browser, f"#{column} [data-part='state']")[0].text
        assert state_line.startswith("done: "), state_line
    assert by_id(browser, "try-send").get_attribute("disabled") is None
    assert by_id(browser, "try-stop").get_attribute("disabled") is not None
    screenshots.save(browser, "try-it-laptop")
    browser.set_window_size(*PHONE)
    screenshots.save(browser, "try-it-phone")
    browser.set_window_size(*LAPTOP)

    # The Send button does the same as Ctrl+Enter: a second send replaces the answers with the same ones.
    by_id(browser, "try-send").click()
    wait(browser, lambda: both_finished(browser), timeout=60, what="both answers again")
    assert [column_text(browser, c) for c in COLUMNS] == [expected[c] for c in COLUMNS]


def test_stop_aborts_both_and_keeps_what_arrived(
    browser: Any, svc: ServiceProcess, job: dict[str, Any]
) -> None:
    done = svc.get(f"/v1/tunings.get/{job['id']}").json()
    full = {
        "try-base": answer(chat(svc, done["model"], messages())),
        "try-tuned": answer(chat(svc, done["fine_tuned_model"], messages())),
    }
    open_job(browser, svc, job["id"])
    wait(browser, lambda: visible(browser, "try-it"), what="the Try it pane")
    set_field(browser, "try-system", SYSTEM)
    set_field(browser, "try-prompt", PROMPT)
    # A slow network (the browser's own throttling, about 1 kB/s): the answers arrive over seconds, in pieces.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": 1000, "uploadThroughput": -1},
    )
    try:
        by_id(browser, "try-send").click()
        wait(
            browser,
            lambda: any(column_text(browser, c) for c in COLUMNS),
            timeout=90,
            what="the first words of an answer",
        )
        assert any(column_state(browser, c) == "streaming" for c in COLUMNS)
        by_id(browser, "try-stop").click()
        wait(browser, lambda: both_finished(browser), timeout=10, what="both columns stopped")
    finally:
        browser.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        browser.execute_cdp_cmd("Network.disable", {})
    for column in COLUMNS:
        assert column_state(browser, column) == "stopped", column
        assert full[column].startswith(column_text(browser, column)), column  # what arrived, no more
        assert column_error(browser, column) == ""
    assert any(column_text(browser, c) for c in COLUMNS)
    assert by_id(browser, "try-send").get_attribute("disabled") is None
    assert by_id(browser, "try-stop").get_attribute("disabled") is not None


def test_errors_are_shown_in_their_column(
    browser: Any, svc: ServiceProcess, job: dict[str, Any], screenshots: Screenshots
) -> None:
    open_job(browser, svc, job["id"])
    wait(browser, lambda: visible(browser, "try-it"), what="the Try it pane")
    done = svc.get(f"/v1/tunings.get/{job['id']}").json()

    # No prompt: the page says so at the field and sends nothing.
    set_field(browser, "try-prompt", "")
    by_id(browser, "try-send").click()
    prompt_error = by_id(browser, "try-prompt-error")
    wait(browser, lambda: "prompt" in prompt_error.text, what="the empty prompt's error")
    assert by_id(browser, "try-prompt").get_attribute("aria-invalid") == "true"
    assert browser.switch_to.active_element == by_id(browser, "try-prompt")
    assert [column_state(browser, c) for c in COLUMNS] == ["idle", "idle"]

    # More tokens than the tiny model's context (512): the service answers 400 context_length_exceeded before
    # streaming; each column shows the API's own message and code.
    set_field(browser, "try-system", "")
    set_field(browser, "try-prompt", PROMPT)
    set_field(browser, "try-max-tokens", "100000")
    api = chat(svc, done["fine_tuned_model"], messages(system=None), max_tokens=100000)
    assert api.status == 400 and api.error["code"] == "context_length_exceeded", api.text
    by_id(browser, "try-send").click()
    assert by_id(browser, "try-prompt").get_attribute("aria-invalid") is None
    wait(browser, lambda: both_finished(browser), timeout=60, what="both columns failed")
    for column in COLUMNS:
        assert column_state(browser, column) == "error", column
        assert column_error(browser, column) == f"{api.error['message']} (context_length_exceeded, HTTP 400)"
        assert column_text(browser, column) == ""
    screenshots.save(browser, "try-it-errors-laptop")
    set_field(browser, "try-max-tokens", "128")


def _raw_stream(svc: ServiceProcess, body: dict[str, Any]) -> bytes:
    """The bytes of a streamed chat completion, as the service sends them."""
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=120)
    try:
        headers = {"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"}
        conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}), headers)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return response.read()
    finally:
        conn.close()


def _pieces(data: bytes, size: int) -> list[str]:
    """`data` cut every `size` bytes (through lines and UTF-8 characters alike), base64 for the page."""
    return [base64.b64encode(data[i : i + size]).decode() for i in range(0, len(data), size)]


# Replaces the page's fetch() for POST /v1/chat/completions only: each model's answer is the planned bytes,
# one piece per read (a macrotask apart, so that the page's reader really gets them one by one). The bodies
# the page sent are kept in window.tryItSent.
FAKE_FETCH = """
const plan = arguments[0];
const realFetch = window.fetch;
window.tryItSent = [];
window.fetch = async (url, init) => {
  if (!String(url).endsWith("/v1/chat/completions")) return realFetch(url, init);
  const body = JSON.parse(init.body);
  window.tryItSent.push(body);
  const pieces = plan[body.model].map((b) => Uint8Array.from(atob(b), (c) => c.charCodeAt(0)));
  const stream = new ReadableStream({
    async pull(controller) {
      await new Promise((resolve) => setTimeout(resolve, 1));
      if (pieces.length) controller.enqueue(pieces.shift());
      else controller.close();
    },
  });
  return new Response(stream, { status: 200, headers: { "Content-Type": "text/event-stream" } });
};
"""


def _chunk(content: str | None = None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    chunk = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    text = json.dumps({**chunk, "choices": [choice], "usage": None}, ensure_ascii=False)
    return f"data: {text}\r\n\r\n"


def test_the_stream_parser_joins_pieces_and_shows_an_error_inside_the_stream(
    browser: Any, svc: ServiceProcess, job: dict[str, Any]
) -> None:
    done = svc.get(f"/v1/tunings.get/{job['id']}").json()
    base_model, tuned_model = done["model"], done["fine_tuned_model"]
    served_base = (
        f"{tuned_model}:base"  # what the base column asks for: the base as served under the fine-tune
    )
    body = {"model": base_model, "messages": messages(), "temperature": 0, "max_tokens": 128}
    real = _raw_stream(svc, body)
    expected = answer(chat(svc, base_model, messages()))
    # The fine-tune's "answer": multi-byte characters cut in the middle, CRLF line ends, a comment, then an
    # error inside the stream (no [DONE] after it), as the service sends when its worker dies mid-answer.
    crashed = {"code": "engine_crashed", "message": "the inference worker stopped during this request"}
    broken = (
        ": a comment\r\n\r\n"
        + _chunk("héllo")
        + _chunk(" wörld ")
        + _chunk("🙂")
        + "data: "
        + json.dumps({"error": {**crashed, "param": None, "type": "api_error"}})
        + "\r\n\r\n"
    ).encode()

    open_job(browser, svc, job["id"])
    wait(browser, lambda: visible(browser, "try-it"), what="the Try it pane")
    plan = {served_base: _pieces(real, 3), tuned_model: _pieces(broken, 1)}
    browser.execute_script(FAKE_FETCH, plan)
    set_field(browser, "try-system", SYSTEM)
    set_field(browser, "try-prompt", PROMPT)
    set_field(browser, "try-temperature", "0")
    set_field(browser, "try-max-tokens", "128")
    by_id(browser, "try-send").click()
    wait(browser, lambda: both_finished(browser), timeout=60, what="both columns finished")
    # The real stream, cut every 3 bytes, reads as the whole answer.
    assert column_state(browser, "try-base") == "done"
    assert column_text(browser, "try-base") == expected
    # The broken one: what came before the error, then the error's message and code.
    assert column_state(browser, "try-tuned") == "error"
    assert column_text(browser, "try-tuned") == "héllo wörld 🙂"
    assert column_error(browser, "try-tuned") == f"{crashed['message']} (engine_crashed, during the answer)"
    # What the page sent: the same messages and settings to both models, streamed.
    sent = browser.execute_script("return window.tryItSent")
    assert sorted(b["model"] for b in sent) == sorted([served_base, tuned_model])
    for b in sent:
        assert b["messages"] == messages() and b["stream"] is True
        assert b["temperature"] == 0 and b["max_tokens"] == 128

    # A stream that just ends (no [DONE], no error) is an incomplete answer, not a finished one.
    cut = real[: real.rindex(b"data: [DONE]")]
    plan = {served_base: _pieces(cut, 7), tuned_model: _pieces(cut, 7)}
    browser.execute_script(FAKE_FETCH, plan)
    by_id(browser, "try-send").click()
    wait(browser, lambda: both_finished(browser), timeout=60, what="both columns finished")
    for column in COLUMNS:
        assert column_state(browser, column) == "error"
        assert column_text(browser, column) == expected
        assert "(stream_incomplete, during the answer)" in column_error(browser, column)
    browser.get("about:blank")  # the page's own fetch again


def test_the_pane_is_absent_on_a_job_that_did_not_succeed(browser: Any, svc: ServiceProcess) -> None:
    cancelled = svc.create_job(model="tiny-llama", training_file="data/train.jsonl")["id"]
    r = svc.post(f"/v1/tunings.cancel/{cancelled}", {})
    assert r.status == 200, r.text
    svc.wait_for(cancelled, "cancelled", timeout=60)
    open_job(browser, svc, cancelled)
    wait(browser, lambda: status_text(browser) == "cancelled", what="the cancelled job")
    assert not visible(browser, "try-it")


def test_a_deleted_fine_tune_fails_in_its_column_only(
    browser: Any, svc: ServiceProcess, job: dict[str, Any]
) -> None:
    done = svc.get(f"/v1/tunings.get/{job['id']}").json()
    r = svc.delete(f"/v1/models/{done['fine_tuned_model']}")
    assert r.status == 200, r.text
    api = chat(svc, done["fine_tuned_model"], messages())
    assert api.status == 404 and api.error["code"] == "model_not_found", api.text

    open_job(browser, svc, job["id"])
    wait(browser, lambda: visible(browser, "try-it"), what="the Try it pane")
    set_field(browser, "try-prompt", PROMPT)
    send_with_ctrl_enter(browser)
    wait(browser, lambda: both_finished(browser), timeout=60, what="both columns finished")
    assert column_state(browser, "try-base") == "done" and column_text(browser, "try-base")
    assert column_state(browser, "try-tuned") == "error"
    assert column_error(browser, "try-tuned") == f"{api.error['message']} (model_not_found, HTTP 404)"


def test_no_script_errors_or_csp_violations(browser: Any) -> None:
    # The 400 and 404 answers above are logged as network errors; a script error or a CSP violation is a
    # defect.
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    assert problems == []

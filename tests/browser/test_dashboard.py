"""The dashboard in a real headless Chromium against a real service training a real tiny model.

One module-scoped service and one training job: sign in (a refused key first), see the job in the list, open
it, watch the chart gain points while it trains (through a service restart: the page's stream resumes with
Last-Event-ID and no record is lost or repeated), see `succeeded`; the form's validation errors next to their
fields; a job created from the form and cancelled from its page; a 401 and sign-out lead back to sign-in.
Screenshots of the list and job pages (laptop and phone widths) are saved under the test's temp dir.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import LAPTOP, PHONE, Screenshots, browser_missing
from tests.support.server import DEV_KEY, ServiceEnv, ServiceProcess

_MISSING = browser_missing()
pytestmark = [
    pytest.mark.skipif(_MISSING is not None, reason=f"browser tests need Chromium: {_MISSING}"),
    pytest.mark.slow,
]

# Long enough to watch (about a second of steps after ~7 s of start-up on 2 quiet cores), short enough for
# the suite.
TRAIN = {
    "epochs": 1,
    "batch_size": 2,
    "max_seq_length": 64,
    "max_steps": 120,
    "logging_steps": 1,
    "eval_steps": 60,
    "save_steps": 60,
}


@pytest.fixture(scope="module")
def svc(service_env: ServiceEnv) -> Iterator[ServiceProcess]:
    s = service_env.start("browser")
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def training_job(svc: ServiceProcess) -> dict[str, Any]:
    """The module's one real training job, submitted before the browser starts so they overlap."""
    return svc.create_job(
        model="tiny-llama",
        method="sft",
        adapter="lora",
        training_file="data/train.jsonl",
        validation_file="data/valid.jsonl",
        hyperparameters=TRAIN,
    )


def wait(driver: Any, condition: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda _d: condition(), message=what)


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def visible(driver: Any, element_id: str) -> bool:
    return bool(by_id(driver, element_id).is_displayed())


def points(driver: Any, chart: str) -> int:
    return int(by_id(driver, chart).get_attribute("data-points") or 0)


def stat(driver: Any, key: str) -> str:
    """The text of one field of the job's summary panel."""
    return str(css(driver, f'#job-stats [data-stat="{key}"]')[0].text)


def status_text(driver: Any) -> str:
    return str(by_id(driver, "job-status").text).lstrip("✓✕ ").strip()


def action(driver: Any, name: str) -> Any:
    return css(driver, f'#job-actions button[data-action="{name}"]')[0]


def shown_actions(driver: Any) -> set[str]:
    return {b.get_attribute("data-action") for b in css(driver, "#job-actions button") if b.is_displayed()}


def sign_in(driver: Any, key: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field = by_id(driver, "api-key")
    field.clear()
    field.send_keys(key + Keys.ENTER)  # the keyboard way


@pytest.mark.timeout(600)
def test_sign_in_list_and_watch_a_job_train(
    browser: Any, svc: ServiceProcess, training_job: dict[str, Any], screenshots: Screenshots
) -> None:
    job_id = training_job["id"]
    browser.get(svc.base_url + "/")  # `/` leads to /ui/
    assert browser.current_url.endswith("/ui/")
    wait(browser, lambda: visible(browser, "view-signin"), what="sign-in view")

    sign_in(browser, "not-a-key")
    key_error = by_id(browser, "api-key-error")
    wait(browser, lambda: "refused" in key_error.text, what="401 shown at the key field")
    assert browser.execute_script("return sessionStorage.length") == 0

    sign_in(browser, DEV_KEY)
    wait(browser, lambda: visible(browser, "view-jobs"), what="jobs list")
    assert browser.execute_script("return document.cookie") == ""
    row = f'tr[data-job="{job_id}"]'
    wait(browser, lambda: css(browser, row), what="the job's row")
    cells = css(browser, row)[0]
    assert "tiny-llama" in cells.text
    screenshots.save(browser, "jobs-list-laptop")

    # Keyboard only: Tab from the status filter to the job's link, Enter opens it.
    from selenium.webdriver.common.keys import Keys

    by_id(browser, "status-filter").send_keys(Keys.ESCAPE)  # focus the filter
    for _ in range(6):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        if job_id in (browser.switch_to.active_element.get_attribute("href") or ""):
            break
    else:
        pytest.fail("Tab never reached the job's link")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait(browser, lambda: visible(browser, "view-job"), what="job page")
    assert by_id(browser, "job-title").text == job_id

    # Watch the chart fill in while the job trains. As soon as the first points are drawn, drop the page's
    # stream for real: the service restarts (the trainer keeps running and is re-attached), and the page
    # must resume from its Last-Event-ID.
    total = TRAIN["max_steps"]
    seen: list[int] = []
    restarted = shot = False
    deadline = time.monotonic() + 300  # minutes only on a machine loaded far beyond its 2 cores
    while time.monotonic() < deadline:
        n = points(browser, "chart-lr")
        if n and (not seen or n != seen[-1]):
            seen.append(n)
        if n == total:
            break
        if n and not restarted:
            svc.restart()
            restarted = True
        if total // 2 <= n < total and not shot:
            screenshots.save(browser, "job-training-laptop")
            shot = True
        time.sleep(0.05)
    assert seen and seen[0] < total and seen[-1] == total, f"points drawn over time: {seen}"
    assert seen == sorted(seen), seen
    wait(browser, lambda: status_text(browser) == "succeeded", timeout=60, what="succeeded")

    # Every step exactly once in the chart, and no log record twice across the reconnect.
    assert points(browser, "chart-tps") == total
    evals = TRAIN["max_steps"] // TRAIN["eval_steps"]
    wait(browser, lambda: points(browser, "chart-loss") == total + evals, what="train and eval points")
    assert points(browser, "chart-acc") == total + evals  # token accuracy, train and eval, every step
    assert len(css(browser, "#chart-acc circle")) == evals

    def statuses() -> list[str]:
        lines = [li.text for li in css(browser, "#job-log li")]
        return [line.split(" (")[0] for line in lines if line.startswith("status: ")]

    # The status line above comes from polling tunings.get, the log from the stream: the stream's own
    # `succeeded` record may land a moment later.
    wait(browser, lambda: len(statuses()) >= 3, what="the stream's succeeded record")
    log_lines = [li.text for li in css(browser, "#job-log li")]
    assert statuses() == [
        "status: queued",
        "status: running",
        "status: succeeded",
    ], statuses()
    assert sum(line.startswith("started:") for line in log_lines) == 1, log_lines[:20]
    assert len(css(browser, "#chart-loss circle")) == evals  # eval points are marked

    # Finished: only download makes sense; resolved hyperparameters and the checkpoints are shown.
    kept = svc.get(f"/v1/tunings.checkpoints/{job_id}").json()["data"]
    assert kept, "save_steps should have left a checkpoint"
    wait(browser, lambda: len(css(browser, "#job-ckpts tr")) == len(kept), what="the checkpoints")
    assert css(browser, "#job-ckpts tr td")[0].text == str(kept[0]["step"])
    buttons = {
        b.get_attribute("data-action") for b in css(browser, "#job-actions button") if b.is_displayed()
    }
    assert buttons == {"download"}
    hp = by_id(browser, "job-hp").text
    assert "max_steps" in hp and str(total) in hp and "lr_scheduler_type" in hp
    assert not visible(browser, "job-error")
    assert stat(browser, "method") == "sft" and stat(browser, "adapter") == "lora"
    assert stat(browser, "from_checkpoint") == "—"
    # An SFT job has the four charts it always had: no rewards.
    shown = [f.get_attribute("id") for f in css(browser, ".charts figure") if f.is_displayed()]
    assert shown == ["chart-loss", "chart-acc", "chart-lr", "chart-tps"], shown
    screenshots.save(browser, "job-succeeded-laptop")

    # The adapter download goes through fetch (it needs the Bearer header) and lands as a file.
    css(browser, '#job-actions button[data-action="download"]')[0].click()
    target = Path(browser.downloads_dir) / f"{job_id}-adapter.tar.gz"
    wait(browser, lambda: target.exists() and target.stat().st_size > 1000, what=f"download {target}")

    browser.set_window_size(*PHONE)
    screenshots.save(browser, "job-succeeded-phone")
    browser.get(svc.base_url + "/ui/#/jobs")
    wait(browser, lambda: css(browser, row), what="list again")
    screenshots.save(browser, "jobs-list-phone")
    browser.set_window_size(*LAPTOP)


def open_form(browser: Any, base_url: str) -> None:
    """A fresh new-job form (no values left by the test before), its hyperparameter fields built from the
    served schema and "More hyperparameters" unfolded."""
    browser.get("about:blank")
    browser.get(base_url + "/ui/#/new")
    if visible(browser, "view-signin"):  # a fresh browser: sign in first (the form follows)
        sign_in(browser, DEV_KEY)
    wait(browser, lambda: visible(browser, "view-new"), what="new-job form")
    hp = by_id(browser, "hp-fields")
    wait(browser, lambda: hp.get_attribute("data-state") == "ready", what="hyperparameter fields")
    method = by_id(browser, "f-method")
    wait(browser, lambda: method.get_attribute("data-state") == "ready", what="method and adapter choices")
    more = css(browser, "#hp-more")
    if more and more[0].get_attribute("open") is None:
        css(browser, "#hp-more > summary")[0].click()


def _open_form(browser: Any, svc: ServiceProcess) -> None:
    open_form(browser, svc.base_url)


def test_form_shows_the_servers_validation_errors_next_to_the_field(
    browser: Any, svc: ServiceProcess, tmp_path: Path, screenshots: Screenshots
) -> None:
    _open_form(browser, svc)
    by_id(browser, "f-model").send_keys("tiny-llama")
    by_id(browser, "f-train-path").send_keys("data/train.jsonl")
    by_id(browser, "f-hp-learning_rate").send_keys("-1")
    by_id(browser, "f-submit").click()
    error = by_id(browser, "f-hp-learning_rate-error")
    wait(browser, lambda: "learning_rate" in error.text, what="learning-rate error at its field")
    assert by_id(browser, "f-hp-learning_rate").get_attribute("aria-invalid") == "true"
    assert browser.switch_to.active_element == by_id(browser, "f-hp-learning_rate")
    assert by_id(browser, "f-train-error").text == ""

    # A training file with a bad line: uploaded, refused by the service's validation, shown with its line.
    bad = tmp_path / "bad.jsonl"
    good_row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text(json.dumps(good_row) + "\n" + '{"messages": [\n', encoding="utf-8")
    by_id(browser, "f-hp-learning_rate").clear()
    by_id(browser, "f-train-path").clear()
    by_id(browser, "f-train-upload").send_keys(str(bad))
    by_id(browser, "f-submit").click()
    train_error = by_id(browser, "f-train-error")
    wait(browser, lambda: "line 2" in train_error.text, what="the bad line shown at the training-file field")
    assert "bad.jsonl" in train_error.text
    assert by_id(browser, "f-hp-learning_rate-error").text == ""
    screenshots.save(browser, "new-job-errors-laptop")
    # Nothing was created by either attempt.
    jobs = svc.get("/v1/tunings.list").json()["data"]
    assert len(jobs) == 1, [j["id"] for j in jobs]


def test_create_from_the_form_then_pause_resume_and_cancel_from_job_pages(
    browser: Any, svc: ServiceProcess, training_job: dict[str, Any]
) -> None:
    from selenium.webdriver.support.ui import Select

    _open_form(browser, svc)
    by_id(browser, "f-model").send_keys("tiny-llama")
    Select(by_id(browser, "f-adapter")).select_by_value("lora")
    by_id(browser, "f-train-path").send_keys("data/train.jsonl")
    by_id(browser, "f-hp-max_steps").send_keys("100000")
    by_id(browser, "f-hp-max_seq_length").send_keys("64")
    by_id(browser, "f-submit").click()
    wait(browser, lambda: "#/jobs/ftjob-" in browser.current_url, what="the new job's page")
    job_id = browser.current_url.rsplit("/", 1)[-1]
    assert job_id != training_job["id"]
    created = svc.get(f"/v1/tunings.get/{job_id}").json()
    assert created["adapter"] == "lora" and created["hyperparameters"]["max_steps"] == 100000
    assert created["method"] == "sft" and created["from_checkpoint"] is None  # the form's default method

    # A second job waits behind it: pause it (queued -> paused at once), resume it, cancel it.
    waiting = svc.create_job(model="tiny-llama", training_file="data/train.jsonl")["id"]
    browser.get(svc.base_url + f"/ui/#/jobs/{waiting}")
    wait(browser, lambda: by_id(browser, "job-title").text == waiting, what="the second job's page")
    wait(browser, lambda: status_text(browser) == "queued", what="the second job, queued")
    assert shown_actions(browser) == {"cancel", "pause"}
    action(browser, "pause").click()
    wait(browser, lambda: status_text(browser) == "paused", what="paused")
    wait(browser, lambda: shown_actions(browser) == {"cancel", "resume"}, what="resume offered")
    action(browser, "resume").click()
    wait(browser, lambda: status_text(browser) == "queued", what="queued again")
    action(browser, "cancel").click()
    wait(browser, lambda: status_text(browser) == "cancelled", what="the second job cancelled")
    assert shown_actions(browser) == set()  # no checkpoint: nothing to resume

    # The first one is training (or about to): cancel it from its page.
    browser.get(svc.base_url + f"/ui/#/jobs/{job_id}")
    wait(browser, lambda: by_id(browser, "job-title").text == job_id, what="the first job's page")
    wait(browser, lambda: "cancel" in shown_actions(browser), what="cancel button")
    action(browser, "cancel").click()
    wait(browser, lambda: status_text(browser) == "cancelled", timeout=60, what="cancelled")
    assert "cancel" not in shown_actions(browser)
    assert svc.get(f"/v1/tunings.get/{job_id}").json()["status"] == "cancelled"
    assert svc.get(f"/v1/tunings.get/{waiting}").json()["status"] == "cancelled"


def test_a_failed_job_shows_its_error_panel(
    browser: Any, svc: ServiceProcess, screenshots: Screenshots
) -> None:
    # A model that is neither a local folder nor reachable offline: the trainer fails at start-up.
    job = svc.create_job(model="no-such-model", training_file="data/train.jsonl")
    browser.get(svc.base_url + f"/ui/#/jobs/{job['id']}")
    wait(browser, lambda: status_text(browser) == "failed", timeout=180, what="failed")
    wait(browser, lambda: visible(browser, "job-error"), what="the error panel")
    failed = svc.get(f"/v1/tunings.get/{job['id']}").json()["error"]
    assert by_id(browser, "job-error-code").text == failed["code"]
    assert failed["message"][:40] in by_id(browser, "job-error-message").text
    assert by_id(browser, "job-error-tail").text.strip()
    wait(
        browser,
        lambda: by_id(browser, "chart-loss").text.endswith("no data"),
        what="an empty chart, finished",
    )
    # Nothing to cancel, resume (no checkpoint) or download.
    assert shown_actions(browser) == set()
    screenshots.save(browser, "job-failed-laptop")


def test_filter_then_a_401_and_sign_out_return_to_sign_in(browser: Any, svc: ServiceProcess) -> None:
    from selenium.webdriver.support.ui import Select

    browser.get(svc.base_url + "/ui/#/jobs")
    wait(browser, lambda: len(css(browser, "#jobs-body tr")) == 4, what="the four jobs")
    Select(by_id(browser, "status-filter")).select_by_visible_text("cancelled")
    wait(browser, lambda: len(css(browser, "#jobs-body tr")) == 2, what="only the cancelled jobs")
    assert all("cancelled" in tr.text for tr in css(browser, "#jobs-body tr"))
    Select(by_id(browser, "status-filter")).select_by_visible_text("all")
    wait(browser, lambda: len(css(browser, "#jobs-body tr")) == 4, what="all jobs again")
    # The key stops working (revoked, say): the next poll's 401 signs the page out.
    browser.execute_script("sessionStorage.setItem('tuning.apiKey', 'revoked-key')")
    Select(by_id(browser, "status-filter")).select_by_visible_text("failed")  # the next request, now
    wait(browser, lambda: visible(browser, "view-signin"), timeout=20, what="sign-in after a 401")
    assert "401" in by_id(browser, "banner").text
    assert css(browser, "#jobs-body tr") == []

    sign_in(browser, DEV_KEY)
    wait(browser, lambda: css(browser, "#jobs-body tr"), what="list after signing in again")
    by_id(browser, "sign-out").click()
    wait(browser, lambda: visible(browser, "view-signin"), what="sign-in after sign-out")
    assert browser.execute_script("return sessionStorage.getItem('tuning.apiKey')") is None
    assert css(browser, "#jobs-body tr") == []
    assert not visible(browser, "nav")


def test_older_and_newer_pages(browser: Any, api_service: ServiceProcess) -> None:
    # A service that runs nothing: 27 queued jobs are 2 pages of the list (25 per page).
    for _ in range(27):
        api_service.create_job()
    browser.get(api_service.base_url + "/ui/")
    sign_in(browser, DEV_KEY)
    wait(browser, lambda: len(css(browser, "#jobs-body tr")) == 25, what="a full first page")
    first = {tr.get_attribute("data-job") for tr in css(browser, "#jobs-body tr")}
    assert by_id(browser, "jobs-newer").get_attribute("disabled") is not None
    by_id(browser, "jobs-next").click()
    wait(browser, lambda: len(css(browser, "#jobs-body tr")) == 2, what="the second page")
    second = {tr.get_attribute("data-job") for tr in css(browser, "#jobs-body tr")}
    assert not first & second
    assert by_id(browser, "jobs-next").get_attribute("disabled") is not None
    by_id(browser, "jobs-newer").click()
    wait(browser, lambda: len(css(browser, "#jobs-body tr")) == 25, what="the first page again")
    by_id(browser, "sign-out").click()


def test_no_script_errors_or_csp_violations(browser: Any) -> None:
    # Network errors are expected above (refused keys, the service's restart); a script error or a blocked
    # resource (CSP) is a defect.
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    assert problems == []

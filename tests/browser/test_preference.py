"""Preference tuning in the dashboard, in a real headless Chromium against a real service whose trainer is
tests/browser/fake_trainer.py (TUNING_TRAINER_COMMAND): it writes a short run's records, with the rewards of
a preference method, in a fraction of a second, so each page here draws a finished job's history.

- A DPO job's page draws the rewards (chosen, rejected, eval ones marked), their margin and the reward
  accuracy from the records it streams, and its summary shows the method, the adapter and from_checkpoint.
- An SFT job's page (created with the old `method: "lora"`) has the four charts it always had.
- The form's Method and Adapter offer the served document's values, with its defaults selected; it sends
  them, and from_checkpoint only when filled in; the new job's summary links the job it started from.
- The API's errors for the new fields (an unknown, malformed or not-ready checkpoint, another base model, a
  LoRA shape that is not the checkpoint's, pairs for SFT) appear next to their fields, word for word.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import LAPTOP, PHONE, Screenshots, browser_missing
from tests.browser.fake_trainer import rewards
from tests.browser.test_dashboard import (
    by_id,
    css,
    open_form,
    points,
    sign_in,
    stat,
    status_text,
    visible,
    wait,
)
from tests.browser.test_hp_form import resolve
from tests.support.server import DEV_KEY, ServiceProcess, make_light_files_root, start_service

_MISSING = browser_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"browser tests need Chromium: {_MISSING}")

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
MODEL = "fake-base"
PAIRS = "data/preference_train.jsonl"
PAIRS_VALID = "data/preference_valid.jsonl"
STEPS, EVAL, SAVE = 8, 4, 4
RUN = {"max_steps": STEPS, "eval_steps": EVAL, "save_steps": SAVE}
EVALS = STEPS // EVAL
PREFERENCE_CHARTS = ["chart-rewards", "chart-margin", "chart-reward-acc"]
SFT_CHARTS = ["chart-loss", "chart-acc", "chart-lr", "chart-tps"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("preference-service")
    files = make_light_files_root(root / "files")  # data/train.jsonl, data/valid.jsonl: chat examples
    for path in (PAIRS, PAIRS_VALID):
        shutil.copyfile(repo_root / path, files / path)
    s = start_service(
        data_dir=root / "data",
        files_root=files,
        models_dir=root / "models",
        extra_env={"TUNING_TRAINER_COMMAND": json.dumps([sys.executable, str(FAKE_TRAINER)])},
    )
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def document(svc: ServiceProcess) -> dict[str, Any]:
    return dict(svc.get("/openapi.json", key=None).json())


@pytest.fixture(scope="module")
def dpo_job(svc: ServiceProcess) -> dict[str, Any]:
    job = svc.create_job(
        model=MODEL,
        method="dpo",
        adapter="lora",
        training_file=PAIRS,
        validation_file=PAIRS_VALID,
        hyperparameters=RUN,
    )
    return svc.wait_for(job["id"], "succeeded", timeout=60)


def field_schema(doc: dict[str, Any], schema: str, name: str) -> dict[str, Any]:
    return resolve(doc, resolve(doc, doc["components"]["schemas"][schema])["properties"][name])


def enum_values(doc: dict[str, Any], prop: dict[str, Any]) -> list[Any]:
    """Every enum value of a property, through its (nested) unions, in order."""
    union = prop.get("anyOf", prop.get("oneOf"))
    if union is None:
        return list(prop.get("enum", []))
    return [v for b in union for v in enum_values(doc, resolve(doc, b))]


def shown(value: float) -> str:
    """A number as the charts' legends write it (3 significant digits, no trailing zeros)."""
    return f"{value:.3g}"


def open_job(browser: Any, svc: ServiceProcess, job_id: str) -> None:
    browser.get("about:blank")
    browser.get(svc.base_url + f"/ui/#/jobs/{job_id}")
    if visible(browser, "view-signin"):
        sign_in(browser, DEV_KEY)
    wait(browser, lambda: by_id(browser, "job-title").text == job_id, what=f"the page of {job_id}")


def displayed_charts(browser: Any) -> list[str]:
    return [f.get_attribute("id") for f in css(browser, ".charts figure") if f.is_displayed()]


def legend(browser: Any, chart: str) -> list[str]:
    return [v.text for v in css(browser, f"#{chart} .legend-value")]


def log_lines(browser: Any) -> list[str]:
    return [li.text for li in css(browser, "#job-log li")]


def test_a_preference_jobs_page_draws_its_rewards(
    browser: Any, svc: ServiceProcess, dpo_job: dict[str, Any], screenshots: Screenshots
) -> None:
    open_job(browser, svc, dpo_job["id"])
    wait(browser, lambda: status_text(browser) == "succeeded", what="succeeded")
    expected = {
        "chart-loss": STEPS + EVALS,
        "chart-rewards": 2 * (STEPS + EVALS),  # chosen and rejected, each step and each eval
        "chart-margin": STEPS + EVALS,
        "chart-reward-acc": STEPS + EVALS,
        "chart-acc": STEPS + EVALS,
        "chart-lr": STEPS,
        "chart-tps": STEPS,
    }
    wait(
        browser,
        lambda: {chart: points(browser, chart) for chart in expected} == expected,
        what=f"every record drawn: {expected}",
    )
    assert displayed_charts(browser) == ["chart-loss", *PREFERENCE_CHARTS, *SFT_CHARTS[1:]]
    assert by_id(browser, "chart-rewards").text.startswith("Rewards")
    series = {p.get_attribute("data-series") for p in css(browser, "#chart-rewards polyline")}
    assert series == {"chosen", "rejected", "eval_chosen", "eval_rejected"}
    # Eval points are marked, as on the loss chart.
    assert len(css(browser, "#chart-rewards circle")) == 2 * EVALS
    assert len(css(browser, "#chart-margin circle")) == len(css(browser, "#chart-reward-acc circle")) == EVALS

    # The legends hold the last values: the trainer's own numbers.
    last, last_eval = rewards(STEPS), rewards(STEPS, "eval_")
    assert legend(browser, "chart-rewards") == [
        shown(last["rewards_chosen"]),
        shown(last["rewards_rejected"]),
        shown(last_eval["eval_rewards_chosen"]),
        shown(last_eval["eval_rewards_rejected"]),
    ]
    assert legend(browser, "chart-margin") == [
        shown(last["rewards_margin"]),
        shown(last_eval["eval_rewards_margin"]),
    ]
    assert legend(browser, "chart-reward-acc") == [
        shown(last["rewards_accuracy"]),
        shown(last_eval["eval_rewards_accuracy"]),
    ]
    first_eval = rewards(EVAL, "eval_")
    eval_line = next(line for line in log_lines(browser) if line.startswith(f"eval: step {EVAL},"))
    assert f"reward accuracy {shown(first_eval['eval_rewards_accuracy'])}" in eval_line, eval_line
    assert f"reward margin {shown(first_eval['eval_rewards_margin'])}" in eval_line, eval_line

    assert (stat(browser, "method"), stat(browser, "adapter")) == ("dpo", "lora")
    assert stat(browser, "from_checkpoint") == "—"
    assert css(browser, '#job-stats [data-stat="from_checkpoint"] a') == []
    screenshots.save(browser, "preference-job-laptop")
    browser.set_window_size(*PHONE)  # one chart a row, nothing wider than the screen
    try:
        assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
        screenshots.save(browser, "preference-job-phone")
    finally:
        browser.set_window_size(*LAPTOP)


def test_an_sft_jobs_page_has_the_charts_it_always_had(browser: Any, svc: ServiceProcess) -> None:
    # The body of before preference tuning: method named the adapter (sft with it).
    job = svc.create_job(
        model=MODEL, method="lora", training_file="data/train.jsonl", validation_file="data/valid.jsonl",
        hyperparameters=RUN,
    )  # fmt: skip
    svc.wait_for(job["id"], "succeeded", timeout=60)
    open_job(browser, svc, job["id"])
    wait(browser, lambda: points(browser, "chart-loss") == STEPS + EVALS, what="the loss, train and eval")
    wait(browser, lambda: status_text(browser) == "succeeded", what="succeeded")
    assert displayed_charts(browser) == SFT_CHARTS
    assert all(points(browser, chart) == 0 for chart in PREFERENCE_CHARTS)
    assert (stat(browser, "method"), stat(browser, "adapter")) == ("sft", "lora")
    eval_line = next(line for line in log_lines(browser) if line.startswith("eval: "))
    assert "reward" not in eval_line, eval_line


SPY = """
window.sentBodies = [];
const original = window.fetch;
window.fetch = (url, init) => {
  if (String(url).endsWith("/v1/tunings.create")) window.sentBodies.push(JSON.parse(init.body));
  return original(url, init);
};
"""


def sent(browser: Any) -> list[dict[str, Any]]:
    return list(browser.execute_script("return window.sentBodies"))


def options(browser: Any, select: str) -> tuple[list[str], list[str]]:
    """(the values, the selected values) of a select."""
    opts = css(browser, f"#{select} option")
    return [o.get_attribute("value") for o in opts], [
        o.get_attribute("value") for o in opts if o.is_selected()
    ]


def test_the_form_sends_method_adapter_and_from_checkpoint_and_the_page_links_the_source(
    browser: Any,
    svc: ServiceProcess,
    document: dict[str, Any],
    dpo_job: dict[str, Any],
    screenshots: Screenshots,
) -> None:
    from selenium.webdriver.support.ui import Select

    # The choices are the document's: the job object's methods, the create body's adapters and defaults.
    methods = enum_values(document, field_schema(document, "TuningJob", "method"))
    adapters = enum_values(document, field_schema(document, "CreateTuningRequest", "adapter"))
    defaults = {n: field_schema(document, "CreateTuningRequest", n)["default"] for n in ("method", "adapter")}
    assert len(methods) >= 4 and "dpo" in methods and len(adapters) >= 2, (methods, adapters)
    open_form(browser, svc.base_url)
    assert options(browser, "f-method") == (methods, [defaults["method"]])
    # Adapter's first choice sends nothing: the service's default, or a checkpoint's own adapter.
    assert options(browser, "f-adapter") == (["", *adapters], [""])
    for help_id in ("f-method-help", "f-adapter-help", "f-from-checkpoint-help"):
        assert by_id(browser, help_id).text.strip(), help_id
    assert "JOB_ID:STEP" in by_id(browser, "f-from-checkpoint-help").text

    source = dpo_job["id"]
    ref = f"{source}:{SAVE}"  # one of its checkpoints
    browser.execute_script(SPY)
    by_id(browser, "f-model").send_keys(MODEL)
    Select(by_id(browser, "f-method")).select_by_value("dpo")
    Select(by_id(browser, "f-adapter")).select_by_value("lora")
    by_id(browser, "f-from-checkpoint").send_keys(ref)
    by_id(browser, "f-train-path").send_keys(PAIRS)
    by_id(browser, "f-hp-max_steps").send_keys("2")
    screenshots.save(browser, "new-preference-job")
    by_id(browser, "f-submit").click()
    wait(browser, lambda: "#/jobs/ftjob-" in browser.current_url, what="the new job's page")
    job_id = browser.current_url.rsplit("/", 1)[-1]
    (body,) = sent(browser)
    assert {k: body[k] for k in ("method", "adapter", "from_checkpoint")} == {
        "method": "dpo",
        "adapter": "lora",
        "from_checkpoint": ref,
    }
    job = svc.get(f"/v1/tunings.get/{job_id}").json()
    assert (job["method"], job["adapter"], job["from_checkpoint"]) == ("dpo", "lora", ref)

    # The summary: the method and adapter, and the checkpoint as given, linking to the job it belongs to.
    wait(browser, lambda: by_id(browser, "job-title").text == job_id, what="the new job's page")
    wait(browser, lambda: stat(browser, "from_checkpoint") == ref, what="from_checkpoint in the summary")
    assert (stat(browser, "method"), stat(browser, "adapter")) == ("dpo", "lora")
    wait(browser, lambda: displayed_charts(browser)[1:4] == PREFERENCE_CHARTS, what="the reward charts")
    link = css(browser, '#job-stats [data-stat="from_checkpoint"] a')[0]
    assert link.get_attribute("href").endswith(f"#/jobs/{source}")
    screenshots.save(browser, "job-from-checkpoint")
    link.click()
    wait(browser, lambda: by_id(browser, "job-title").text == source, what="the source job's page")
    assert browser.current_url.endswith(f"#/jobs/{source}")

    # Left as they are: the defaults are sent, and no from_checkpoint at all.
    open_form(browser, svc.base_url)
    browser.execute_script(SPY)
    by_id(browser, "f-model").send_keys(MODEL)
    by_id(browser, "f-train-path").send_keys("data/train.jsonl")
    by_id(browser, "f-hp-max_steps").send_keys("2")
    by_id(browser, "f-submit").click()
    wait(browser, lambda: "#/jobs/ftjob-" in browser.current_url, what="the second job's page")
    (body,) = sent(browser)
    assert body["method"] == defaults["method"] and "adapter" not in body and "from_checkpoint" not in body
    job = svc.get("/v1/tunings.get/" + browser.current_url.rsplit("/", 1)[-1]).json()
    assert job["from_checkpoint"] is None
    assert stat(browser, "from_checkpoint") == "—"


def test_the_apis_errors_for_the_new_fields_appear_next_to_them(
    browser: Any, svc: ServiceProcess, document: dict[str, Any], dpo_job: dict[str, Any]
) -> None:
    from selenium.webdriver.support.ui import Select

    source = dpo_job["id"]
    # A job that has no final adapter yet: it trains for minutes (it is cancelled at the end).
    running = svc.create_job(
        model=MODEL, training_file="data/train.jsonl", hyperparameters={"max_steps": 100000}
    )
    before = len(svc.get("/v1/tunings.list?limit=100").json()["data"])
    defaults = {n: field_schema(document, "CreateTuningRequest", n)["default"] for n in ("method", "adapter")}
    checkpoint = ("f-from-checkpoint", "f-from-checkpoint-error")
    training = ("f-train-path", "f-train-error")
    cases: list[tuple[dict[str, Any], str, tuple[str, str], int]] = [
        # (what the form is given, the error's param, (the control, its error's element), the API's status)
        ({"from_checkpoint": "ftjob-nosuchjob"}, "from_checkpoint", checkpoint, 404),
        ({"from_checkpoint": f"{source}:999"}, "from_checkpoint", checkpoint, 404),
        ({"from_checkpoint": "not a checkpoint"}, "from_checkpoint", checkpoint, 422),
        ({"from_checkpoint": running["id"]}, "from_checkpoint", checkpoint, 409),
        ({"from_checkpoint": source, "model": "other-base"}, "from_checkpoint", checkpoint, 422),
        (
            {"from_checkpoint": source, "lora_r": 8},
            "hyperparameters.lora_r",
            ("f-hp-lora_r", "f-hp-lora_r-error"),
            422,
        ),
        ({"method": "dpo"}, "training_file", training, 422),  # chat examples, no pairs
        ({"method": "sft", "training_file": PAIRS}, "training_file", training, 422),
    ]
    try:
        for given, param, (control_id, error_id), status in cases:
            open_form(browser, svc.base_url)
            model = given.get("model", MODEL)
            training_file = given.get("training_file", "data/train.jsonl")
            by_id(browser, "f-model").send_keys(model)
            by_id(browser, "f-train-path").send_keys(training_file)
            if "method" in given:
                Select(by_id(browser, "f-method")).select_by_value(given["method"])
            if "from_checkpoint" in given:
                by_id(browser, "f-from-checkpoint").send_keys(given["from_checkpoint"])
            if "lora_r" in given:
                by_id(browser, "f-hp-lora_r").send_keys(str(given["lora_r"]))
            by_id(browser, "f-submit").click()
            # The same body straight to the API: the field shows exactly its message.
            body: dict[str, Any] = {**defaults, "model": model, "training_file": training_file}
            body.update({k: v for k, v in given.items() if k in ("method", "from_checkpoint")})
            if "lora_r" in given:
                body["hyperparameters"] = {"lora_r": given["lora_r"]}
            r = svc.post("/v1/tunings.create", body)
            assert (r.status, r.error["param"]) == (status, param), (given, r.text)
            error, message = by_id(browser, error_id), r.error["message"]

            def shown_at_the_field(error: Any = error, message: str = message) -> bool:
                return bool(error.text == message)

            wait(browser, shown_at_the_field, what=f"{r.error['code']} at {param}")
            control = by_id(browser, control_id)
            assert control.get_attribute("aria-invalid") == "true", given
            assert browser.switch_to.active_element == control, given
            others = [e.text for e in css(browser, "#new-form .field-error") if e != error and e.text]
            assert others == [], (given, others)
    finally:
        svc.post(f"/v1/tunings.cancel/{running['id']}")
    assert len(svc.get("/v1/tunings.list?limit=100").json()["data"]) == before  # nothing was created


def test_no_script_errors_or_csp_violations(browser: Any) -> None:
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    assert problems == []

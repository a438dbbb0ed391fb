"""The new-job form's hyperparameter fields are the served schema's: for every property of
`components.schemas.Hyperparameters` in `GET /openapi.json` (iterated from the document, never from a list
here) the form has an input with the document's limits, default and description; a value over a limit gets
the server's own error next to that field; a job created from the form arrives with exactly the typed values
it was given and the defaults for everything else; and without the schema the form says so and its JSON box
still works.

A service that runs nothing (`api_service`: jobs stay queued), so no model or trainer is needed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.conftest import LAPTOP, PHONE, Screenshots, browser_missing
from tests.browser.test_dashboard import by_id, css, open_form, visible, wait
from tests.support.server import ServiceProcess

_MISSING = browser_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"browser tests need Chromium: {_MISSING}")

NUMERIC = ("integer", "number")


@pytest.fixture(scope="module")
def document(api_service: ServiceProcess) -> dict[str, Any]:
    r = api_service.get("/openapi.json", key=None)
    assert r.status == 200, r.text
    return dict(r.json())


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for key in schema["$ref"].removeprefix("#/").split("/"):
            node = node[key]
        schema = node
    return schema


@pytest.fixture(scope="module")
def properties(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    schema = resolve(document, document["components"]["schemas"]["Hyperparameters"])
    props = {name: resolve(document, prop) for name, prop in schema["properties"].items()}
    assert len(props) >= 10, props  # the document really lists the hyperparameters
    return props


def branches(doc: dict[str, Any], prop: dict[str, Any]) -> list[dict[str, Any]]:
    return [resolve(doc, b) for b in prop.get("anyOf", prop.get("oneOf", [prop]))]


def numeric_branch(doc: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any] | None:
    return next((b for b in branches(doc, prop) if b.get("type") in NUMERIC), None)


def limit(branch: dict[str, Any], side: str) -> tuple[float | None, bool]:
    """(the limit, whether it is exclusive) of the branch's lower ("minimum") or upper ("maximum") side."""
    exclusive = "exclusive" + side[0].upper() + side[1:]
    if exclusive in branch:
        return branch[exclusive], True
    return branch.get(side), False


def shown(value: Any) -> str:
    """A default as the form shows it: JSON words for booleans, names joined by commas for a list."""
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, list):
        return ", ".join(value)
    return "" if value is None else str(value)


def control(browser: Any, name: str) -> Any:
    fields = css(browser, f'[data-param="hyperparameters.{name}"]')
    assert len(fields) == 1, f"one field for {name}, found {len(fields)}"
    controls = [c for c in css(browser, f"#f-hp-{name}") if c.tag_name in ("input", "select")]
    assert len(controls) == 1, f"one input or select #f-hp-{name}"
    inside = fields[0].find_elements("css selector", f"#f-hp-{name}")
    assert inside, f"#f-hp-{name} is inside its data-param field"
    return controls[0]


def create_default(doc: dict[str, Any], name: str) -> Any:
    """The create body's default for one of its fields (what the form selects first)."""
    body = resolve(doc, doc["components"]["schemas"]["CreateTuningRequest"])
    return resolve(doc, body["properties"][name])["default"]


def fill_required(browser: Any) -> None:
    by_id(browser, "f-model").send_keys("some-model")
    by_id(browser, "f-train-path").send_keys("data/train.jsonl")


def jobs(svc: ServiceProcess) -> list[dict[str, Any]]:
    return list(svc.get("/v1/tunings.list").json()["data"])


def test_every_property_has_an_input_with_the_documents_limits_default_and_help(
    browser: Any,
    api_service: ServiceProcess,
    document: dict[str, Any],
    properties: dict[str, Any],
    screenshots: Screenshots,
) -> None:
    open_form(browser, api_service.base_url)
    # One field per property, in the document's order, and none that the document does not have.
    on_page = [
        f.get_attribute("data-param").split(".", 1)[1]
        for f in css(browser, '#hp-fields [data-param^="hyperparameters."]')
    ]
    assert on_page == list(properties)

    for name, prop in properties.items():
        c = control(browser, name)
        assert c.is_displayed(), name
        number = numeric_branch(document, prop)
        for side, attr in (("minimum", "min"), ("maximum", "max")):
            value, exclusive = limit(number, side) if number else (None, False)
            got = c.get_dom_attribute(attr)
            if value is None:
                assert got is None, (name, attr, got)
            else:
                assert got is not None and float(got) == value, (name, attr, got, value)
                marked = c.get_dom_attribute(f"data-{attr}-exclusive") is not None
                assert marked == exclusive, (name, attr, "exclusive", exclusive)
        words = [b["const"] for b in branches(document, prop) if "const" in b]
        if number and not words:
            assert c.get_dom_attribute("type") == "number", name
            assert c.get_dom_attribute("step") == ("1" if number["type"] == "integer" else "any"), name
        if number and words:  # a number or a word ("auto"): the words are offered as suggestions
            options = css(browser, f"#{c.get_dom_attribute('list')} option")
            assert [o.get_attribute("value") for o in options] == words, name

        default = prop.get("default")
        choices = [v for b in branches(document, prop) for v in b.get("enum", [])]
        if any(b.get("type") == "boolean" for b in branches(document, prop)):
            choices += [True, False]
        if choices:
            choices = [*words, *choices]  # a choice or a word ("auto"): the words come first
            assert c.tag_name == "select", name
            options = css(browser, f"#f-hp-{name} option")
            first, rest = options[0], options[1:]
            assert first.get_attribute("value") == "", name  # empty: the server's default
            assert first.text == ("default" if default is None else f"default ({shown(default)})"), name
            assert [o.get_attribute("value") for o in rest] == [shown(v) for v in choices], name
        elif isinstance(default, (int, float)):
            assert float(c.get_attribute("placeholder")) == default, name
        else:
            assert c.get_attribute("placeholder") == shown(default), name

        help_text = by_id(browser, f"f-hp-{name}-help").text
        description = prop.get("description", "")
        assert description[1:] in help_text, (name, help_text)
        assert f"f-hp-{name}-help" in c.get_attribute("aria-describedby").split(), name
        label = css(browser, f'label[for="f-hp-{name}"]')
        assert label and label[0].text.strip(), name
    screenshots.save(browser, "new-job-hyperparameters")
    browser.set_window_size(*PHONE)  # one column at phone width, nothing wider than the screen
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    screenshots.save(browser, "new-job-hyperparameters-phone")
    browser.set_window_size(*LAPTOP)


def over_the_limit(branch: dict[str, Any]) -> int | float | None:
    value, exclusive = limit(branch, "maximum")
    if value is None:
        return None
    over = value if exclusive else value + 1
    # Written the same by JavaScript and Python (2, not 2.0), so the messages compare exactly.
    return int(over) if float(over).is_integer() else over


def test_a_value_over_a_limit_gets_the_servers_error_next_to_its_field(
    browser: Any,
    api_service: ServiceProcess,
    document: dict[str, Any],
    properties: dict[str, Any],
    screenshots: Screenshots,
) -> None:
    before = len(jobs(api_service))
    open_form(browser, api_service.base_url)
    fill_required(browser)
    tried = []
    previous: Any = None
    for name, prop in properties.items():
        number = numeric_branch(document, prop)
        over = over_the_limit(number) if number else None
        if over is None:
            continue
        if previous is not None:
            previous.clear()
        c = previous = control(browser, name)
        c.send_keys(str(over))
        by_id(browser, "f-submit").click()
        # The same body straight to the API: the field shows exactly the server's message.
        body = {
            "model": "some-model",
            "method": create_default(document, "method"),
            "adapter": create_default(document, "adapter"),
            "training_file": "data/train.jsonl",
            "hyperparameters": {name: over},
        }
        r = api_service.post("/v1/tunings.create", body)
        assert r.status == 422 and r.error["param"] == f"hyperparameters.{name}", (name, r.text)
        error = by_id(browser, f"f-hp-{name}-error")
        wait(browser, lambda e=error, m=r.error["message"]: e.text == m, what=f"the server's error at {name}")
        assert c.get_attribute("aria-invalid") == "true", name
        others = [e.text for e in css(browser, "#new-form .field-error") if e != error]
        assert not any(others), (name, others)
        tried.append(name)
    assert len(tried) >= 10, tried  # every property with an upper limit
    screenshots.save(browser, "new-job-limit-error")

    # Text that is no number goes to the server as typed; so does a list with an empty name (the error names
    # item 1, shown at the list's field). A number box holding no number ("1e": the browser does not say what
    # it holds) is refused at the field by the page. A field folded away under "More hyperparameters" is
    # unfolded by the error and focused.
    for name, text in (("epochs", "lots"), ("lora_target_modules", "q_proj,"), ("learning_rate", "1e")):
        if name not in properties:
            continue
        open_form(browser, api_service.base_url)
        fill_required(browser)
        c = control(browser, name)
        c.send_keys(text)
        if c.find_elements("xpath", "ancestor::details"):
            css(browser, "#hp-more > summary")[0].click()  # fold it again
            assert not c.is_displayed(), name
        by_id(browser, "f-submit").click()
        error = by_id(browser, f"f-hp-{name}-error")
        wait(browser, lambda e=error, n=name: f"hyperparameters.{n}" in e.text, what=f"error at {name}")
        assert c.is_displayed() and browser.switch_to.active_element == c, name
        assert c.get_attribute("aria-invalid") == "true", name
    assert len(jobs(api_service)) == before  # nothing was created


def test_a_job_created_from_the_form_has_exactly_the_values_typed(
    browser: Any, api_service: ServiceProcess, document: dict[str, Any], properties: dict[str, Any]
) -> None:
    from selenium.webdriver.support.ui import Select

    defaults = {name: prop.get("default") for name, prop in properties.items()}
    typed = {
        "epochs": ("3", 3),
        "learning_rate": ("0.001", 0.001),
        "max_steps": ("7", 7),
        "lora_target_modules": ("q_proj, v_proj", ["q_proj", "v_proj"]),
        # The preference methods' (any job may set them; an SFT job does not use them).
        "dpo_beta": ("auto", "auto"),
        "simpo_gamma_beta_ratio": ("1.5", 1.5),
    }
    chosen = {"lr_scheduler_type": ("linear", "linear"), "gradient_checkpointing": ("true", True)}
    assert set(typed) | set(chosen) <= set(properties)
    open_form(browser, api_service.base_url)
    fill_required(browser)
    for name, (text, _) in typed.items():
        control(browser, name).send_keys(text)
    for name, (text, _) in chosen.items():
        Select(control(browser, name)).select_by_value(text)
    by_id(browser, "f-submit").click()
    wait(browser, lambda: "#/jobs/ftjob-" in browser.current_url, what="the new job's page")
    job = api_service.get("/v1/tunings.get/" + browser.current_url.rsplit("/", 1)[-1]).json()
    expected = {**defaults, **{name: value for name, (_, value) in {**typed, **chosen}.items()}}
    assert job["hyperparameters"] == expected
    # Typed as the API types them: 3 (not "3", not 3.0), a list, a boolean.
    for name, (_, value) in {**typed, **chosen}.items():
        assert type(job["hyperparameters"][name]) is type(value), name
    # Method and adapter left as the form offers them: the create body's defaults; no from_checkpoint.
    assert job["method"] == create_default(document, "method")
    assert job["adapter"] == create_default(document, "adapter")
    assert job["from_checkpoint"] is None


def test_without_the_schema_the_form_says_so_and_the_json_box_still_works(
    browser: Any, api_service: ServiceProcess, document: dict[str, Any], screenshots: Screenshots
) -> None:
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/openapi.json"]})
    try:
        browser.get("about:blank")
        browser.get(api_service.base_url + "/ui/#/new")
        wait(browser, lambda: visible(browser, "view-new"), what="new-job form")
        wait(browser, lambda: css(browser, "#hp-unavailable"), what="the message")
        assert "/openapi.json" in by_id(browser, "hp-unavailable").text
        assert by_id(browser, "hp-fields").get_attribute("data-state") == "failed"
        assert css(browser, '#hp-fields [data-param^="hyperparameters."]') == []
        # Method and adapter offer only the service's default (left out of the body), and say why.
        method = by_id(browser, "f-method")
        wait(browser, lambda: method.get_attribute("data-state") == "failed", what="no method choices")
        for select in ("f-method", "f-adapter"):
            assert [o.get_attribute("value") for o in css(browser, f"#{select} option")] == [""], select
            assert "/openapi.json" in by_id(browser, f"{select}-help").text, select
        screenshots.save(browser, "new-job-no-schema")

        fill_required(browser)
        extra = by_id(browser, "f-hp-extra")
        extra.send_keys('{"epochs": 0}')  # refused: the error goes to the JSON box
        by_id(browser, "f-submit").click()
        box_error = by_id(browser, "f-hp-extra-error")
        wait(browser, lambda: "hyperparameters.epochs" in box_error.text, what="the error at the JSON box")
        assert css(browser, "#hp-unavailable"), "the message stays after a submit"
        extra.clear()
        extra.send_keys('{"epochs": 2, "lora_r": 8}')
        by_id(browser, "f-submit").click()
        wait(browser, lambda: "#/jobs/ftjob-" in browser.current_url, what="the new job's page")
        job = api_service.get("/v1/tunings.get/" + browser.current_url.rsplit("/", 1)[-1]).json()
        assert job["hyperparameters"]["epochs"] == 2 and job["hyperparameters"]["lora_r"] == 8
        for name in ("method", "adapter"):  # the service's defaults
            assert job[name] == create_default(document, name), name
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        browser.execute_cdp_cmd("Network.disable", {})
    # Reachable again: opening the form again (the same page, no reload) builds the fields.
    browser.execute_script("window.samePage = true; location.hash = '#/new'")
    wait(browser, lambda: by_id(browser, "hp-fields").get_attribute("data-state") == "ready", what="fields")
    assert css(browser, "#f-hp-epochs") and not css(browser, "#hp-unavailable")
    wait(browser, lambda: by_id(browser, "f-method").get_attribute("data-state") == "ready", what="methods")
    assert len(css(browser, "#f-method option")) > 1 and len(css(browser, "#f-adapter option")) > 1
    assert browser.execute_script("return window.samePage") is True


def test_no_script_errors_or_csp_violations(browser: Any) -> None:
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    assert problems == []

"""The dashboard's files as HTTP serves them (no browser needed): content types, cache policy, the strict
Content-Security-Policy, 404s, nothing inline, every file shipped as package data, and no hand-written copy of
the hyperparameters' schema in the form's scripts."""

from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path
from typing import Any

from tests.support.server import ServiceProcess
from tuning_service.api import ui as routes_ui

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

UI_DIR = routes_ui.UI_DIR  # the served folder (a path next to api/ui.py would not exist: globs found nothing)
REPO = Path(__file__).resolve().parents[2]


def _assets_of(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)="([^"#]+)\"""", html)


def test_root_and_bare_ui_lead_to_the_dashboard(api_service: ServiceProcess) -> None:
    import http.client

    for path in ("/", "/ui"):
        conn = http.client.HTTPConnection("127.0.0.1", api_service.port, timeout=10)
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status in (301, 307), (path, r.status)
        assert r.getheader("location").endswith("/ui/"), r.getheader("location")
        conn.close()


def test_index_and_assets_have_types_cache_policy_and_a_strict_csp(api_service: ServiceProcess) -> None:
    r = api_service.get("/ui/", key=None)
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-cache"
    # Nothing inline, nothing from another origin.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text)
    assert "<style" not in r.text and " style=" not in r.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)
    assets = _assets_of(r.text)
    assert {"app.css", "js/main.js", "favicon.svg"} <= set(assets)
    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
    for asset in assets:
        a = api_service.get("/ui/" + asset, key=None)
        assert a.status == 200, asset
        assert a.headers["content-type"].startswith(types[Path(asset).suffix]), (asset, a.headers)
        assert a.headers["cache-control"] == "no-cache" and a.headers["etag"]
        assert a.headers["content-security-policy"] == csp


def test_every_imported_module_is_served(api_service: ServiceProcess) -> None:
    for js in sorted((UI_DIR / "js").glob("*.js")):
        for target in re.findall(r"""from\s+"\./([\w-]+\.js)\"""", js.read_text(encoding="utf-8")):
            assert (UI_DIR / "js" / target).is_file(), (js.name, target)
        r = api_service.get(f"/ui/js/{js.name}", key=None)
        assert r.status == 200 and r.headers["content-type"].startswith("text/javascript"), js.name


def test_every_module_is_reachable_from_main() -> None:
    # index.html loads js/main.js only; a module nothing imports (directly or not) is dead code the browser
    # never runs. Following the imports from main.js must reach every file in ui/js.
    imports = {
        js.name: set(re.findall(r"""from\s+"\./([\w-]+\.js)\"""", js.read_text(encoding="utf-8")))
        for js in (UI_DIR / "js").glob("*.js")
    }
    reached, todo = set(), ["main.js"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(imports.get(name, ()))
    assert reached == set(imports), sorted(set(imports) - reached)


def test_etag_revalidation_is_a_304(api_service: ServiceProcess) -> None:
    first = api_service.get("/ui/js/main.js", key=None)
    again = api_service.get("/ui/js/main.js", key=None, headers={"If-None-Match": first.headers["etag"]})
    assert again.status == 304 and again.body == b""
    stale = api_service.get("/ui/js/main.js", key=None, headers={"If-None-Match": '"other"'})
    assert stale.status == 200 and stale.body == first.body


def test_unknown_files_and_traversal_are_404(api_service: ServiceProcess) -> None:
    for path in (
        "/ui/nope.js",
        "/ui/js/nope.js",
        "/ui/../routes_ui.py",
        "/ui/%2e%2e/routes_ui.py",
        "/ui/js/..%2f..%2froutes_ui.py",
        "/ui/index.html/",
    ):
        r = api_service.get(path, key=None)
        assert r.status == 404, (path, r.status)
        assert b"import" not in r.body


def test_no_html_injection_sinks_in_the_scripts() -> None:
    # Server data goes into the page as text only (textContent / createTextNode via dom.js).
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(")
    for js in (UI_DIR / "js").glob("*.js"):
        text = js.read_text(encoding="utf-8")
        assert not sinks.search(text), js.name
        # One idea per file: modules stay small.
        assert len(text.splitlines()) <= 200, (js.name, len(text.splitlines()))


def test_every_ui_file_is_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["tuning_service"]
    for path in UI_DIR.rglob("*"):
        if path.is_file():
            rel = path.relative_to(UI_DIR.parent).as_posix()
            assert any(fnmatch.fnmatch(rel, g) for g in globs), rel


def test_wrong_method_is_405_naming_get(api_service: ServiceProcess) -> None:
    for path in ("/ui/", "/ui/js/main.js"):
        r = api_service.post(path, {}, key=None)
        assert r.status == 405, (path, r.status)
        assert "GET" in r.headers["allow"], r.headers


# The new-job form's scripts.
FORM_MODULES = ("hp-schema.js", "hp-fields.js", "job-fields.js", "new-job.js", "form-errors.js")


def test_the_form_holds_no_list_of_hyperparameters(api_service: ServiceProcess) -> None:
    # The new-job form builds its inputs from the served schema (hp-schema.js, hp-fields.js): apart from the
    # few it shows first, no hyperparameter's name is written in the form's scripts (a copy would drift).
    doc = api_service.get("/openapi.json", key=None).json()
    names = set(doc["components"]["schemas"]["Hyperparameters"]["properties"])
    common = {"epochs", "learning_rate", "batch_size"}
    for module in FORM_MODULES:
        text = (UI_DIR / "js" / module).read_text(encoding="utf-8")
        written = {n for n in names if re.search(rf"\b{re.escape(n)}\b", text)}
        assert written <= common, (module, sorted(written - common))
    assert '"./hp-schema.js"' in (UI_DIR / "js" / "hp-fields.js").read_text(encoding="utf-8")
    assert '"/openapi.json"' in (UI_DIR / "js" / "hp-schema.js").read_text(encoding="utf-8")


def _enum(doc: dict[str, Any], prop: dict[str, Any]) -> list[str]:
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return [v for branch in prop[key] for v in _enum(doc, branch)]
    if "$ref" in prop:
        return _enum(doc, doc["components"]["schemas"][prop["$ref"].rsplit("/", 1)[-1]])
    return list(prop.get("enum", []))


def test_the_form_holds_no_list_of_methods_or_adapters(api_service: ServiceProcess) -> None:
    # The Method and Adapter selects are filled from the served schema (job-fields.js): no value of either
    # is written in the form's scripts or in the page (a copy would drift from the service).
    doc = api_service.get("/openapi.json", key=None).json()
    schemas = doc["components"]["schemas"]
    values = {
        *_enum(doc, schemas["CreateTuningRequest"]["properties"]["method"]),
        *_enum(doc, schemas["CreateTuningRequest"]["properties"]["adapter"]),
        *_enum(doc, schemas["TuningJob"]["properties"]["method"]),
    }
    assert {"dpo", "qlora"} <= values, values  # the document really lists them
    for module in FORM_MODULES:
        text = (UI_DIR / "js" / module).read_text(encoding="utf-8")
        written = {v for v in values if re.search(rf"[\"'`]{re.escape(v)}[\"'`]", text)}
        assert not written, (module, sorted(written))
    form = (UI_DIR / "index.html").read_text(encoding="utf-8").split('id="new-form"', 1)[1]
    options = set(re.findall(r'<option value="([^"]*)"', form))
    assert options <= {""}, options  # only "default", until the document's choices replace it
